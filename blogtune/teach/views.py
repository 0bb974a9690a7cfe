"""Teacher-free views: questions with short answers computed from the markdown itself.

They exist on every run (no teacher, no network). Each item is a *group* of phrasings of one
question with one answer; held-out selection and the exam work on groups, so a held-out fact is
never trained in another phrasing.
"""

from __future__ import annotations

from blogtune.teach.sections import Section, ends_with_colon, sentences

MAX_LEAD_CHARS = 300
# Passed to the teach rule as a param: Snakemake reruns a stage when its settings change, not when
# blogtune's code does, so a change to what a view asks or answers must bump this (v2: no answer
# ends on a colon). tests/test_teach.py pins the views of its posts to it.
VIEWS_VERSION = "views-v2"

PHRASINGS = {
    "outline": {
        "en": ['What are the sections of my post "{title}"?', 'Give me the outline of "{title}".',
               'How is the post "{title}" structured?'],
        "zh": ["我的文章《{title}》分哪几个部分？", "列出《{title}》的提纲。", "《{title}》这篇文章的结构是什么？"],
    },
    "section": {
        "en": ['In my post "{title}", what is the section "{heading}" about?',
               'Summarize the section "{heading}" of "{title}" in one sentence.',
               'What is the main point of "{heading}" in my post "{title}"?'],
        "zh": ["在《{title}》里，“{heading}”这一节讲了什么？", "用一句话概括《{title}》的“{heading}”一节。",
               "《{title}》中“{heading}”部分的要点是什么？"],
    },
    "command": {
        "en": ['Show the {what} from the section "{heading}" of my post "{title}".',
               'What {what} do I use in "{title}", section "{heading}"?'],
        "zh": ["给出《{title}》“{heading}”一节里的{what}。", "《{title}》的“{heading}”部分用的{what}是什么？"],
    },
    "fact": {
        "en": ['In my post "{title}", what does it say about `{name}`?',
               'What does "{title}" say about `{name}`?'],
        "zh": ["《{title}》里是怎么说 `{name}` 的？", "在《{title}》中，`{name}` 是什么？"],
    },
}
CODE_WORDS = {"en": ("command", "code block {k}"), "zh": ("命令", "第 {k} 段代码")}


def _group(section: Section, kind: str, ident: str, fields: dict, answer: str) -> list[dict]:
    qs = PHRASINGS[kind][section.lang]
    group = f"view:{kind}:{section.article_id}#{ident}"
    return [
        {"article_id": section.article_id, "title": section.title, "heading": section.heading, "kind": kind,
         "source": "view", "group": group, "question": q.format(title=section.title, **fields),
         "answer": answer, "lang": section.lang}
        for q in qs
    ]


def outline(sections: list[Section]) -> list[dict]:
    heads = [s.heading for s in sections if s.heading != s.title]
    if len(heads) < 2:
        return []
    rows = _group(sections[0], "outline", "", {}, "\n".join(f"- {h}" for h in heads))
    return [{**r, "heading": ""} for r in rows]  # post-level: grounded in the whole post


def lead(section: Section) -> str:
    """The first sentences of a section's prose, up to MAX_LEAD_CHARS (an extractive summary).
    No sentence that announces what the lead leaves out: a code block or table ("Run it like
    this:"), or, at its end, a list that did not fit. Quoted without what follows, it promises
    what never comes, and a lead ending on a promise teaches the model to stop on one."""
    sep = " " if section.lang == "en" else ""
    kept: list[str] = []
    for s in sentences(section.prose):
        if s in section.intros:
            continue
        if kept and len(sep.join(kept)) + len(s) > MAX_LEAD_CHARS:
            break
        kept.append(s)
    while kept and ends_with_colon(kept[-1]):
        kept.pop()
    return sep.join(kept)[:MAX_LEAD_CHARS]


def section_views(section: Section) -> list[dict]:
    rows: list[dict] = []
    fields = {"heading": section.heading}
    text = lead(section)
    if text and section.heading != section.title:
        rows += _group(section, "section", section.heading, fields, text)
    single, numbered = CODE_WORDS[section.lang]
    for k, (info, code) in enumerate(section.code_blocks, start=1):
        what = single if len(section.code_blocks) == 1 else numbered.format(k=k)
        answer = f"```{info}\n{code.rstrip()}\n```"
        rows += _group(section, "command", f"{section.heading}#{k}", {**fields, "what": what}, answer)
    for name in section.inline_code:
        answer = fact_answer(section, name)
        if answer:
            rows += _group(section, "fact", f"{section.heading}#{name}", {"name": name}, answer)
    return rows


def fact_answer(section: Section, name: str) -> str:
    """One sentence that names `name`: the first prose sentence that is not an introduction (one
    ending in a colon), else its table row written out as "header: cell" pairs (a raw "| a | b |"
    row has no headers and teaches the model to emit table markup). One sentence, because longer
    answers are the ones the model fails to end (README). A one-character code span (`=`, `<`)
    names no fact, so it gets no question."""
    if len(name) < 2:
        return ""
    code = f"`{name}`"
    said = [s for s in sentences(section.prose) if code in s and not ends_with_colon(s)]
    if said:
        return said[0]
    row = next((r for r in section.table_rows if any(code in cell for _, cell in r)), None)
    if row is None:
        return ""  # named only where something is introduced ("compared with `json`:"): no fact
    colon, sep, end = (": ", "; ", ".") if section.lang == "en" else ("：", "；", "。")
    text = sep.join(f"{h}{colon}{c}" if h else c for h, c in row if c)
    return text if text[-1] in ".!?。！？" else text + end


def post_views(sections: list[Section]) -> list[dict]:
    rows = outline(sections)
    for s in sections:
        rows += section_views(s)
    return rows
