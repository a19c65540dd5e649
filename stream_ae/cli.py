"""The `stream-ae` command line."""
import sys


def main(argv=None) -> int:
    print("stream-ae: not yet wired", file=sys.stderr)
    return 2
