"""Write the house-format fine-tuning task: train.jsonl (180 chats) and heldout.jsonl (16).

    python scripts/make_finetune_task.py OUT_DIR [--seed 7] [--sites]

With --sites it writes the federated split instead: OUT_DIR/site-{a,b,c}/train.jsonl and
heldout.jsonl, each site holding only the topics of its own teams (non-IID).

The chats are generated (autoglm.finetune.housestyle), not collected: IT-helpdesk
questions whose answers start with the tag [ACME] and end with "Ref: <QUEUE>".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoglm.finetune.housestyle import write_site_tasks, write_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sites", action="store_true", help="the federated split, one per site")
    args = p.parse_args()
    if args.sites:
        for site, (train, held) in write_site_tasks(args.out_dir, args.seed).items():
            print(f"site {site}: wrote {train} ({len(train.read_text().splitlines())} chats) "
                  f"and {held} ({len(held.read_text().splitlines())})")
        return
    train, held = write_task(args.out_dir, args.seed)
    print(f"wrote {train} and {held}")


if __name__ == "__main__":
    main()
