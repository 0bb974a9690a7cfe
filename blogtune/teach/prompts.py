"""Teacher prompts (versioned: a change of wording must re-ask, so bump PROMPT_VERSION) and the
parser of the teacher's answers. Small teachers rarely emit valid JSON, so the format asked for
is plain `Q:` / `A:` lines, parsed leniently."""

from __future__ import annotations

import re

PROMPT_VERSION = "teach-v1"

SYSTEM = {
    "en": "You write study material about one section of a blog post. Use only facts stated in it.",
    "zh": "你为博客文章的某一节编写学习材料。只使用这一节里写明的事实。",
}
QA = {
    "en": (
        'Section "{heading}" of the blog post "{title}":\n\n{text}\n\n'
        "Write {n} questions a reader could ask about the facts in this section (commands, flags, "
        "numbers, names, versions, causes and fixes), each naming its subject, with a short answer "
        "(one or two sentences) in the section's own words. Use exactly this format:\nQ: ...\nA: ...\n"
    ),
    "zh": (
        "博客文章《{title}》的“{heading}”一节：\n\n{text}\n\n"
        "针对这一节里的事实（命令、参数、数字、名称、版本、原因和解决办法）写 {n} 个问题，每个问题写明主语，"
        "并用这一节自己的说法给出简短回答（一两句话）。严格使用以下格式：\nQ: ...\nA: ...\n"
    ),
}
REWRITE = {
    "paraphrase": {
        "en": "Rewrite this section in your own words. Keep every command, number and name.",
        "zh": "用你自己的话改写这一节，保留所有命令、数字和名称。",
    },
    "summary": {
        "en": "Summarize this section in two or three sentences. Keep the key commands, numbers and names.",
        "zh": "用两三句话概括这一节，保留关键的命令、数字和名称。",
    },
    "colleague": {
        "en": "Explain this section to a colleague in one short paragraph. Keep commands, numbers and names.",
        "zh": "像给同事讲解一样，用一小段话解释这一节，保留命令、数字和名称。",
    },
}
# The user turn a rewrite is trained under (the teacher prompt itself is never trained on).
REWRITE_QUESTION = {
    "paraphrase": {"en": 'Tell me in other words what the section "{heading}" of my post "{title}" says.',
                   "zh": "换个说法讲讲《{title}》的“{heading}”一节。"},
    "summary": {"en": 'Summarize the section "{heading}" of my post "{title}".',
                "zh": "概括一下《{title}》的“{heading}”一节。"},
    "colleague": {"en": 'Explain the section "{heading}" of "{title}" as you would to a colleague.',
                  "zh": "像给同事讲解一样解释《{title}》的“{heading}”一节。"},
}
REWRITE_STYLES = tuple(REWRITE)


def qa_messages(title: str, heading: str, text: str, lang: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM[lang]},
            {"role": "user", "content": QA[lang].format(title=title, heading=heading, text=text, n=n)}]


def rewrite_messages(title: str, heading: str, text: str, lang: str, style: str) -> list[dict]:
    head = QA[lang].split("\n\n{text}")[0].format(title=title, heading=heading)
    return [{"role": "system", "content": SYSTEM[lang]},
            {"role": "user", "content": f"{head}\n\n{text}\n\n{REWRITE[style][lang]}"}]


_Q = re.compile(r"^\s*(?:[-*]\s*)?\**\s*(?:Q|Question|问题?)\s*\d*\s*\**\s*[:：.]\s*\**\s*(.*)$", re.I)
_A = re.compile(r"^\s*(?:[-*]\s*)?\**\s*(?:A|Answer|答案?)\s*\d*\s*\**\s*[:：.]\s*\**\s*(.*)$", re.I)


def parse_qa(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from `Q: ... / A: ...` lines; an answer may span lines."""
    pairs: list[tuple[str, str]] = []
    q: str | None = None
    a: list[str] | None = None
    for line in text.splitlines():
        if m := _Q.match(line):
            if q is not None and a is not None:
                pairs.append((q, "\n".join(a).strip()))
            q, a = m.group(1).strip(), None
        elif (m := _A.match(line)) and q is not None and a is None:
            a = [m.group(1)]
        elif a is not None and line.strip():
            a.append(line)
    if q is not None and a is not None:
        pairs.append((q, "\n".join(a).strip()))
    return [(q.strip("* "), a.strip("* ")) for q, a in pairs]
