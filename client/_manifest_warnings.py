"""Legal but odd site data: warnings the site should read before joining a run.

Nothing here stops a run (what cannot work is an error in :mod:`client.manifest`): an empty
split, a site with a single class, images of several sizes or channel counts (the transforms
resize and convert them). Each warning is ``(row, column, message)``; row numbers are
spreadsheet rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from client.splits import SPLITS
from models.tasks import TaskSpec

__all__ = ["manifest_warnings"]

Finding = tuple[int | None, str | None, str]
Shapes = Mapping[str, Sequence[tuple[int, tuple[int, int], int]]]
_SHOWN = 4


def manifest_warnings(frame: pd.DataFrame, task: TaskSpec, shapes: Shapes) -> list[Finding]:
    """Warnings about a checked, split manifest.

    Args:
        frame: the rows with ``split`` and ``label_index`` columns (index = spreadsheet row).
        task: the task the manifest was checked against.
        shapes: per modality column, ``(row, (width, height), channels)`` of each image read.
    """
    out = _split_warnings(frame)
    out += _class_warnings(frame, task)
    for column, found in shapes.items():
        out += _size_warnings(column, found, task)
    return out


def _split_warnings(frame: pd.DataFrame) -> list[Finding]:
    counts = frame["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    advice = {
        "train": "this site can only evaluate (external validation) and will refuse training "
        "rounds; give some patients split=train if it should train",
        "val": "fine unless the run evaluates on val (eval-split=val)",
        "test": "the site reports no test metrics (the default eval-split is test); give some "
        "patients split=test, or drop the split column for an automatic split",
    }
    return [(None, "split", f"the {s} split has no rows: {advice[s]}") for s in empty]


def _class_warnings(frame: pd.DataFrame, task: TaskSpec) -> list[Finding]:
    classes = task.classes
    present = sorted(set(frame["label_index"].tolist()))
    if len(present) == 1:
        name = classes[present[0]]
        return [
            (
                None,
                "label",
                f"every row has label {name!r}: a single-class site can still train in a "
                "federation, but its own AUC, sensitivity and specificity are undefined; "
                "check that the labels are not all the same by mistake",
            )
        ]
    train = frame[frame["split"] == "train"]
    train_present = sorted(set(train["label_index"].tolist()))
    if len(train_present) == 1:
        name = classes[train_present[0]]
        return [
            (
                None,
                "label",
                f"the train split has only class {name!r} ({len(train)} rows): local training "
                "sees one class; move some patients of the other classes to train",
            )
        ]
    return []


def _size_warnings(
    column: str, found: Sequence[tuple[int, tuple[int, int], int]], task: TaskSpec
) -> list[Finding]:
    out: list[Finding] = []
    sizes: dict[tuple[int, int], list[int]] = defaultdict(list)
    channels: dict[int, list[int]] = defaultdict(list)
    for row, size, chans in found:
        sizes[size].append(row)
        channels[chans].append(row)
    if len(sizes) > 1:
        out.append(
            (
                min(rows[0] for rows in sizes.values()),
                column,
                f"images come in {len(sizes)} sizes ({_listing(sizes, _size_text)}); all are "
                f"resized to {task.image_size}x{task.image_size} (aspect ratio not kept): fine "
                "if intended, else crop or pad them to one size first",
            )
        )
    if len(channels) > 1:
        target = "grey (1 channel)" if task.in_chans == 1 else f"{task.in_chans} channels"
        out.append(
            (
                min(rows[0] for rows in channels.values()),
                column,
                f"images mix channel counts ({_listing(channels, _channel_text)}); all are "
                f"converted to {target} (alpha dropped, grey repeated, colour to grey for "
                "1-channel models): fine if intended, else export them alike",
            )
        )
    return out


def _listing(groups: Mapping[Any, list[int]], text: Callable[[Any], str]) -> str:
    ranked = Counter({key: len(rows) for key, rows in groups.items()}).most_common()
    parts = [
        f"{text(key)} in {count} row{'s' if count != 1 else ''}, e.g. row {groups[key][0]}"
        for key, count in ranked[:_SHOWN]
    ]
    if len(ranked) > _SHOWN:
        parts.append(f"{len(ranked) - _SHOWN} more")
    return "; ".join(parts)


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _channel_text(channels: int) -> str:
    names = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
    return f"{channels}-channel ({names.get(channels, 'other')})"
