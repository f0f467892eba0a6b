"""Class-name reconciliation across splits.

Public datasets often name the same class differently in each split: the Kaggle chest-CT set calls a test folder
``adenocarcinoma`` and the matching train folder ``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``. Training on the
raw names silently turns such a test set into classes the model has never seen. medcli maps names automatically
when one name is the unique prefix of another at a token boundary, applies explicit aliases first, and refuses
anything ambiguous.
"""

from __future__ import annotations

from ..errors import MedcliError

#: Characters that end a token: ``adenocarcinoma`` is a prefix of ``adenocarcinoma_left...`` at a boundary,
#: while ``adeno`` is not a token prefix of ``adenocarcinoma``.
_BOUNDARY = set("_.- ()[],;:+")

SPLIT_ORDER = ("train", "val", "test")


def parse_aliases(items: list[str] | None) -> dict[str, str]:
    """Parse ``RAW=CLASS`` strings (from ``--alias``) into a mapping."""
    aliases: dict[str, str] = {}
    for item in items or []:
        raw, sep, target = item.partition("=")
        if not sep or not raw.strip() or not target.strip():
            raise MedcliError(f"--alias {item!r}: expected RAW_NAME=CLASS_NAME, e.g. --alias 'adenocarcinoma_left=adenocarcinoma'")
        aliases[raw.strip()] = target.strip()
    return aliases


def is_token_prefix(short: str, long: str) -> bool:
    """True when ``short`` is ``long``'s beginning and ``long`` continues with a token separator."""
    s, l = short.casefold(), long.casefold()
    return len(l) > len(s) and l.startswith(s) and l[len(s)] in _BOUNDARY


def reconcile_classes(names_by_split: dict[str | None, set[str]], aliases: dict[str, str] | None = None) -> dict[str, str]:
    """Map every raw class name to its canonical class name.

    Args:
        names_by_split: raw class names found in each split (``None`` for a dataset without splits).
        aliases: explicit ``raw -> canonical`` names; applied before automatic matching.

    Returns:
        ``{raw_name: canonical_name}`` for every raw name.

    Raises:
        MedcliError: when two folders of one split would merge into one class, when a val/test class has no
            counterpart in train, or when an alias names an unknown class.
    """
    aliases = dict(aliases or {})
    all_raw = {name for names in names_by_split.values() for name in names}
    unknown = sorted(set(aliases) - all_raw)
    if unknown:
        raise MedcliError(
            f"--alias names class {unknown[0]!r}, which is not in the dataset; known names: {', '.join(sorted(all_raw))}"
        )

    def aliased(name: str) -> str:
        return aliases.get(name, name)

    # Names as spelled in the earliest split (train first) are the preferred spellings.
    spelled: dict[str, str] = {}
    for split in sorted(names_by_split, key=_split_rank):
        for name in sorted(names_by_split[split]):
            spelled.setdefault(aliased(name).casefold(), aliased(name))

    mapping: dict[str, str] = {}
    if len(names_by_split) > 1:
        candidates = sorted(spelled)
        for raw in all_raw:
            key = aliased(raw).casefold()
            prefixes = [c for c in candidates if is_token_prefix(c, key)]
            # Prefixes of one string are nested, so the shortest is the root of the chain.
            root = min(prefixes, key=len) if prefixes else key
            mapping[raw] = spelled[root]
    else:
        mapping = {raw: spelled[aliased(raw).casefold()] for raw in all_raw}

    for split, names in names_by_split.items():
        merged: dict[str, list[str]] = {}
        for name in names:
            merged.setdefault(mapping[name], []).append(name)
        for canonical, raws in merged.items():
            if len(raws) > 1 and not all(r in aliases for r in raws):
                where = f"split {split!r}" if split else "the dataset"
                raise MedcliError(
                    f"ambiguous class names in {where}: {', '.join(sorted(raws))} would all become {canonical!r}; "
                    f"say what you mean with --alias RAW=CLASS for each of them"
                )

    if "train" in names_by_split:
        train_classes = {mapping[n] for n in names_by_split["train"]}
        for split, names in names_by_split.items():
            orphans = sorted({mapping[n] for n in names} - train_classes)
            if orphans:
                raise MedcliError(
                    f"class {orphans[0]!r} of split {split!r} matches no train class "
                    f"({', '.join(sorted(train_classes))}); map it with --alias {orphans[0]}=<train class>"
                )
    return mapping


def _split_rank(split: str | None) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
