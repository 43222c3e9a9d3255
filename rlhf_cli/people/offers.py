"""Work shared by several people at once — the ranking page's raters (web_label.Board), the writers of demonstrations
(demonstrations.WriteBoard): who did which item, what to offer each person next, and an item on someone's screen held
for them. One server per run is the run's lock (rlhf_cli.runtime.lock).

Bookkeeping only: a board built on `Offers` writes its files (under `lock`) before it records the change here, and
rebuilds this state from those files when a server starts (the files are the state).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

LEASE_SECONDS = 30 * 60  # an item shown to a person is held for them this long (or until they act)


class Offers:
    """Items `todo` (indices), each offered until it has `per_item` results by different people, never twice to one
    person, and never to more people at once than results are still wanted."""

    def __init__(self, todo: Iterable[int], per_item: int = 1, lease_seconds: float = LEASE_SECONDS):
        self.todo, self.per_item, self.lease_seconds = list(todo), per_item, lease_seconds
        self.done_by: dict[int, list[str]] = defaultdict(list)
        self.skipped_by: dict[str, set[int]] = defaultdict(set)
        self.action = 0  # the next action number (`n` of a row): undo takes back a person's highest
        self.leases: dict[str, tuple[int, float]] = {}  # person -> (item, until)
        self.lock = threading.Lock()

    def load(self, done: list[dict], skipped: list[dict], who: Callable[[dict], str]) -> None:
        """The state of rows already in the files: `sample` is the item, `who(row)` the person, `n` the action."""
        for row in done:
            self.done_by[row["sample"]].append(who(row))
        for row in skipped:
            self.skipped_by[who(row)].add(row["sample"])
        self.action = max((r.get("n", -1) for r in done + skipped), default=-1) + 1

    # -------------------------------------------------------------------------------------------- what to offer

    def open_for(self, person: str, index: int) -> bool:
        return (
            person not in self.done_by[index]
            and index not in self.skipped_by[person]
            and len(self.done_by[index]) < self.per_item
        )

    def _held_by_others(self, person: str, index: int, now: float) -> int:
        return sum(s == index and until > now for who, (s, until) in self.leases.items() if who != person)

    def next_index(self, person: str) -> int | None:
        """The item to show `person` (the one held for them, else the first still wanted), held for them; call under
        `lock`."""
        now = time.monotonic()
        held = self.leases.get(person)
        if held and held[1] > now and self.open_for(person, held[0]):
            return held[0]
        for index in self.todo:
            if (
                self.open_for(person, index)
                and len(self.done_by[index]) + self._held_by_others(person, index, now) < self.per_item
            ):
                self.leases[person] = (index, now + self.lease_seconds)
                return index
        self.leases.pop(person, None)
        return None

    def counts(self, person: str) -> dict:
        return {
            "done": sum(min(len(self.done_by[i]), self.per_item) for i in self.todo),
            "needed": len(self.todo) * self.per_item,
            "items": len(self.todo),
            "items_done": sum(len(self.done_by[i]) >= self.per_item for i in self.todo),
            "yours": sum(person in self.done_by[i] for i in self.todo),
            "skipped_by_you": len(self.skipped_by[person]),
            "open_for_you": sum(self.open_for(person, i) for i in self.todo),
        }

    # -------------------------------------------------------------------------------------------- changes

    def check(self, person: str, index, done: str) -> int:
        """`index` as an item `person` may act on now, else ValueError (`done`: the verb, e.g. 'ranked')."""
        if not isinstance(index, int) or isinstance(index, bool) or index not in self.todo:
            raise ValueError("no such prompt")
        if person in self.done_by[index] or index in self.skipped_by[person]:
            raise ValueError(f"you have already {done} or skipped this prompt (undo it to change it)")
        return index

    def did(self, person: str, index: int) -> None:
        self.action += 1
        self.done_by[index].append(person)
        self.leases.pop(person, None)

    def skipped(self, person: str, index: int) -> None:
        self.action += 1
        self.skipped_by[person].add(index)
        self.leases.pop(person, None)

    def undone(self, person: str, index: int, was_done: bool) -> None:
        """A result (`was_done`) or skip of `person` was taken back: the item is theirs again, next."""
        if was_done:
            self.done_by[index].remove(person)
        else:
            self.skipped_by[person].discard(index)
        self.leases[person] = (index, time.monotonic() + self.lease_seconds)
