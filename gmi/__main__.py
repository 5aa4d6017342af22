"""``python -m gmi``: the command line (see gmi/cli.py)."""
import sys


def _start() -> int:
    try:
        from .cli import main
    except ModuleNotFoundError as exc:  # the pip step was skipped, or another Python runs the command
        if (exc.name or "").split(".")[0] == __package__.split(".")[0]:
            raise  # a module of the pack itself: not the user's to fix
        print(f"error: the Python package '{exc.name}' is missing for {sys.executable}: run "
              "'pip install -r requirements.txt' in the pack's folder with this Python, then try again",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted while starting: nothing was submitted", file=sys.stderr)
        return 130
    return main()


sys.exit(_start())
