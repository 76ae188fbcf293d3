"""``python -m samplers`` (and ``torchrun -m samplers bench ...``) runs the CLI."""

from samplers.cli import main

if __name__ == "__main__":
    main()
