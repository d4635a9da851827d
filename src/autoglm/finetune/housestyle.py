"""A small task whose effect can be measured: answers in a house format.

ACME's IT helpdesk wants every answer to start with the tag ``[ACME]``, then one sentence
of advice, then the sign-off ``Ref: <QUEUE>`` naming the queue that handles the topic.
The base model never writes the tag on its own. Questions are built from topics and
phrasings; the held-out questions are about topics that no training example mentions,
so a rising format rate shows the format was learned, not the answers.

``scripts/make_finetune_task.py`` writes the files; the tests call ``make_task``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TAG = "[ACME]"

# topic, advice, queue
_TOPICS = [
    ("my password", "reset it from the self-service portal, then sign in again", "IAM"),
    ("the VPN", "reinstall the VPN client and reconnect with your badge number", "NET"),
    ("the printer", "power it off for ten seconds and send the job again", "DESK"),
    ("my laptop battery", "bring the laptop to the service desk for a battery test", "HW"),
    ("my email quota", "archive old mail to the shared archive folder", "MAIL"),
    ("my badge", "ask reception for a temporary badge and report the old one", "SEC"),
    ("the office wifi", "forget the network and join ACME-Staff again", "NET"),
    ("my second monitor", "check the cable and pick extend in the display settings", "HW"),
    ("installing software", "request it in the software catalogue", "DESK"),
    ("a phishing email", "forward it to the security mailbox and delete it", "SEC"),
    ("my calendar", "remove and re-add the shared calendar", "MAIL"),
    ("the meeting room screen", "press the input button until the laptop appears", "AV"),
    ("my keyboard", "plug it into another port or take a spare from the desk", "HW"),
    ("two-factor login", "re-enrol your phone in the authenticator app", "IAM"),
    ("a locked account", "wait fifteen minutes or ask the desk to unlock it", "IAM"),
    ("the shared drive", "reconnect it from the start menu shortcut", "NET"),
    ("a slow computer", "restart it and close the browser tabs you do not need", "DESK"),
    ("my headset", "select it as the default device in the sound settings", "AV"),
    ("a broken mouse", "collect a replacement from the service desk", "HW"),
    ("mail on my phone", "add the account with the company mail app", "MAIL"),
    ("the expense tool", "clear the browser cache and log in again", "APP"),
    ("the HR portal", "use the portal link on the intranet home page", "APP"),
    ("a new starter's account", "have the manager file the onboarding form", "IAM"),
    ("a lost phone", "report it at once so the desk can wipe it", "SEC"),
    ("the projector", "switch it to HDMI one and wait for the lamp", "AV"),
    ("disk space", "empty the downloads folder and the recycle bin", "DESK"),
    ("a stuck update", "leave it running overnight on mains power", "DESK"),
    ("the time sheet app", "submit before Friday noon, then it locks", "APP"),
    ("screen sharing", "allow screen recording for the meeting app", "AV"),
    ("a USB stick", "use an encrypted company stick from the desk", "SEC"),
]
_HELD_OUT = [
    ("my docking station", "unplug it for a minute and connect it again", "HW"),
    ("the door access system", "tap your badge twice and call security if it fails", "SEC"),
    ("the company chat app", "sign out and back in to refresh your channels", "APP"),
    ("my mailbox rules", "edit them in the web mail settings", "MAIL"),
    ("the video conference camera", "select the room camera in the meeting settings", "AV"),
    ("the guest wifi", "ask reception for a day code", "NET"),
    ("my desk phone", "restart it by pulling the network cable", "HW"),
    ("a certificate warning", "do not continue and send a screenshot to the desk", "SEC"),
    ("the travel booking site", "book through the travel portal only", "APP"),
    ("my home directory", "restore files from the previous versions tab", "DESK"),
    ("a blue screen", "note the error code and restart", "DESK"),
    ("the payroll system", "log in from the office network", "APP"),
    ("my smart card reader", "update the driver from the software catalogue", "HW"),
    ("a suspicious text message", "do not reply and report it to security", "SEC"),
    ("the plotter", "load paper in the right tray and restart the job", "DESK"),
    ("sharing a file outside ACME", "use the secure transfer site", "SEC"),
]
_PHRASINGS = [
    "I have a problem with {t}. What should I do?",
    "Can you help me with {t}?",
    "Something is wrong with {t}.",
    "How do I fix {t}?",
    "Quick question about {t}.",
    "{t} stopped working this morning. Any advice?",
]


def answer(topic: str, advice: str, queue: str) -> str:
    topic = topic.replace("my ", "your ")
    return f"{TAG} For {topic}, {advice}. Ref: {queue}"


def _question(phrasing: str, topic: str) -> str:
    text = phrasing.format(t=topic)
    return text[0].upper() + text[1:]


def _chat(question: str, reply: str | None) -> dict:
    messages = [{"role": "user", "content": question}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return {"messages": messages}


def make_task(seed: int = 7) -> tuple[list[dict], list[dict]]:
    """(training chats, held-out chats): every training topic in each phrasing; each
    held-out topic once, in a phrasing chosen by the seed."""
    rng = random.Random(seed)
    train = [_chat(_question(p, t), answer(t, a, q))
             for t, a, q in _TOPICS for p in _PHRASINGS]
    rng.shuffle(train)
    held = [_chat(_question(rng.choice(_PHRASINGS), t), answer(t, a, q))
            for t, a, q in _HELD_OUT]
    return train, held


def write_task(out_dir: Path, seed: int = 7) -> tuple[Path, Path]:
    train, held = make_task(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    for path, rows in zip(paths, (train, held)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def in_house_format(text: str) -> bool:
    """The answer starts with the house tag (what the metric counts)."""
    return text.lstrip().startswith(TAG)


def format_rate(answers: list[str]) -> float:
    return sum(in_house_format(a) for a in answers) / len(answers) if answers else 0.0


# Federated: the training topics split by the teams that handle them, one group per site,
# so that each site knows only its own teams' topics (non-IID: different topics, queues and
# example counts per site).
SITE_QUEUES = {"a": ("IAM", "SEC", "MAIL"), "b": ("NET", "HW"), "c": ("DESK", "AV", "APP")}
_HELD_PHRASING = len(_PHRASINGS) - 1  # held out at every site, never trained on


def make_site_tasks(seed: int = 7) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per site, (training chats, held-out chats): the site's topics in every phrasing but
    the last for training, in the last one held out. The union of the held-out sets
    covers every topic."""
    out: dict[str, tuple[list[dict], list[dict]]] = {}
    for n, (site, queues) in enumerate(SITE_QUEUES.items()):
        topics = [t for t in _TOPICS if t[2] in queues]
        train = [_chat(_question(p, t), answer(t, a, q)) for t, a, q in topics
                 for i, p in enumerate(_PHRASINGS) if i != _HELD_PHRASING]
        random.Random(seed + n).shuffle(train)
        held = [_chat(_question(_PHRASINGS[_HELD_PHRASING], t), answer(t, a, q))
                for t, a, q in topics]
        out[site] = (train, held)
    return out


def write_site_tasks(out_dir: Path, seed: int = 7) -> dict[str, tuple[Path, Path]]:
    """``out_dir/site-NAME/{train,heldout}.jsonl`` for each site."""
    paths: dict[str, tuple[Path, Path]] = {}
    for site, (train, held) in make_site_tasks(seed).items():
        folder = out_dir / f"site-{site}"
        folder.mkdir(parents=True, exist_ok=True)
        pair = folder / "train.jsonl", folder / "heldout.jsonl"
        for path, rows in zip(pair, (train, held)):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[site] = pair
    return paths
