// The Python module init of an ahead-of-time build (setup.py): the extension library is imported
// as samplers._C_<name>, and importing it runs the TORCH_LIBRARY registrations of its binding file.
// The module itself only says whether CUDA kernels were compiled in (WITH_CUDA).
#pragma once
#if defined(SAMPLERS_PY_MODULE)
#include <Python.h>

#if defined(SAMPLERS_WITH_CUDA)
#define SAMPLERS_MODULE_WITH_CUDA 1
#else
#define SAMPLERS_MODULE_WITH_CUDA 0
#endif

#define SAMPLERS_DEFINE_PY_MODULE(NAME, DOC)                                                        \
  extern "C" PyObject* PyInit_##NAME(void) {                                                        \
    static PyModuleDef def = {PyModuleDef_HEAD_INIT, #NAME, DOC, -1, nullptr};                      \
    PyObject* module = PyModule_Create(&def);                                                       \
    if (module != nullptr) PyModule_AddIntConstant(module, "WITH_CUDA", SAMPLERS_MODULE_WITH_CUDA); \
    return module;                                                                                  \
  }
#else
#define SAMPLERS_DEFINE_PY_MODULE(NAME, DOC)
#endif
