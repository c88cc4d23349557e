"""The `gossipsim` command and `python -m gossipsim`."""
import signal
import sys
import threading


def main() -> int:
    # Importing the simulator loads torch (seconds). A Ctrl-C is held until that is done, then honoured: one cut
    # into the import leaves numpy or torch half made, and the command fails later with a traceback.
    held: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum)) if main_thread else None
    try:
        from .sim.cli import main as cli
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if held:
        print("gossipsim: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return cli()


if __name__ == "__main__":
    sys.exit(main())
