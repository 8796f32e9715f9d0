"""A feedback-writing process for the feedback tests: `python -m tests.feedback_worker --folder F ...`.

Each of `--threads` threads logs `--records` tweet ratings (0: until killed) through one
`FeedbackStore` and, with `--print-ids`, prints each record's id only after `log()` has
returned, so a parent that kills this process knows which rows were accepted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from hub.feedback.store import FeedbackStore

RATINGS = {"relevance": 4, "clarity": 5, "originality": 3, "engagement": 4}


def rate(store: FeedbackStore, text: str = "Ship it.") -> dict:
    """Log one tweet rating of `text`; return the record."""
    return store.log(task="tweet", kind="rating", inputs={"prompt": "Advice"}, completion=text,
                     ratings=RATINGS)


def rate_in_threads(store: FeedbackStore, *, threads: int, records: int, prefix: str = "") -> None:
    """`threads` threads each log `records` ratings through `store` at once; return when all are logged."""
    workers = [threading.Thread(target=lambda n=n: [rate(store, f"{prefix}{n}-{i}") for i in range(records)])
               for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def write(store: FeedbackStore, *, writer: int, records: int, print_ids: bool, lock: threading.Lock) -> None:
    number = 0
    while records == 0 or number < records:
        record = store.log(task="tweet", kind="rating", inputs={"prompt": f"writer {writer}"},
                           completion=f"tweet {number} of writer {writer}", ratings=RATINGS,
                           session=store.session_id(f"session-{writer}"))
        number += 1
        if print_ids:
            with lock:
                sys.stdout.write(record["id"] + "\n")
                sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--repo")
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--print-ids", action="store_true")
    args = parser.parse_args()
    store = FeedbackStore(folder=args.folder, repo_id=args.repo, every=args.every)
    store.setup()
    lock = threading.Lock()
    threads = [threading.Thread(target=write, args=(store,),
                                kwargs={"writer": n, "records": args.records, "print_ids": args.print_ids,
                                        "lock": lock})
               for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close(push=False)


if __name__ == "__main__":
    main()
