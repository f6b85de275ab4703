"""Child process of the kill -9 test: appends and commits in a loop,
printing ``offset`` once each commit made it durable (what a confirm would
promise), until it is killed."""

from __future__ import annotations

import sys
from pathlib import Path

from mqbroker.streams.log import StreamLog


def payload(offset: int) -> bytes:
    return b"%09d" % offset * (1 + offset % 13)


def main() -> None:
    log = StreamLog(Path(sys.argv[1]), max_segment_bytes=int(sys.argv[2]))
    while True:
        for _ in range(1 + log.next_offset % 17):
            log.append(payload(log.next_offset), log.next_offset)
        mark = log.commit_mark()
        log.sync(mark)
        log.committed(mark)
        sys.stdout.write(f"{mark.next_offset}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
