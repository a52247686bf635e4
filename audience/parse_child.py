"""The contact import's parser process: ``python -m audience.parse_child``.

Started by audience.importing.parsing for a large file. This module imports nothing of
Django or the app before it has taken the real stdout for itself: the parent reads
length-prefixed pickles from it, and one stray print (during Django's set-up, say)
would corrupt that stream. Whatever else writes to stdout lands on stderr.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import traceback

HEAD = struct.Struct("!Q")


def send(stream, kind: str, body: object) -> None:
    data = pickle.dumps((kind, body), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEAD.pack(len(data)))
    stream.write(data)
    stream.flush()


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")  # the pipe to the parent, ours alone
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import django

        django.setup()
        from audience.importing import parsing
    except BaseException:
        send(out, "crash", traceback.format_exc())
        return
    parsing.child_main(out)


if __name__ == "__main__":
    main()
