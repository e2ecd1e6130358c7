"""How often one scene's block split leaves a requested split empty: hashed alone vs ranked.

Before issue 18 each block took the label of its own hash, so on a small scene a split
could get no block; ``SplitRule.assign`` ranks a scene's blocks by hash and labels them
by quota. This counts, over seeds, the scenes where some requested split got no block.
No timing: the numbers are exact for the seeds given.

    .venv/bin/python benchmarks/split_guarantee.py [--seeds 1000]
"""

from __future__ import annotations

import argparse

from xchm.chips.splits import SplitRule

FRACTIONS = ({"train": 0.8, "val": 0.2}, {"train": 0.7, "val": 0.2, "test": 0.1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    args = parser.parse_args()
    print("| fractions | blocks | a split empty, hashed alone | a split empty, ranked |")
    print("|---|---|---|---|")
    for fractions in FRACTIONS:
        for blocks in (2, 4, 9):
            units = {("scene-0", i // 3, i % 3): "scene-0" for i in range(blocks)}
            alone = ranked = 0
            for seed in range(args.seeds):
                rule = SplitRule(fractions=fractions, seed=seed)
                alone += {rule.label(*key) for key in units} != set(fractions)
                ranked += set(rule.assign(units).values()) != set(fractions)
            name = "/".join(f"{round(100 * f)}" for f in fractions.values())
            print(f"| {name} | {blocks} | {alone / args.seeds:.1%} | {ranked / args.seeds:.1%} |")


if __name__ == "__main__":
    main()
