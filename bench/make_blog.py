"""Generate a large synthetic markdown blog for benchmarks and scale tests.

The output mimics the layout of ``sample_blog/`` (and of Chinese tech blogs such as
digoal/blog) so that the workflow sees realistic input at any size:

* posts at ``YYYYMM/YYYYMMDD_NN.md`` (three posts a day, starting 2016-01-04);
* YAML front matter on most posts (some without it, some without a ``title`` key),
  a ``# Title`` heading, the house sections (``## 背景`` ... / ``## Background`` ...),
  paragraphs of mixed Chinese and English sentences assembled from word lists, fenced
  ``sql`` / ``bash`` / ``python`` code blocks (now and then one longer than 1,200
  characters), a one-sentence summary, and the same shared footer as the sample blog;
* a ``README.md`` index: intro lines, look-alike lines, then the marker ``### 文章列表``
  followed by one ``##### YYYYMM/YYYYMMDD_NN.md   [《Title》](YYYYMM/YYYYMMDD_NN.md)`` line
  per post, newest first, months separated by ``----`` lines.

Posts average about 3,000 characters; 5,000 posts take a few seconds. Output is
deterministic: post ``i`` depends only on ``(seed, i)``, so generating posts
``start_index .. start_index + posts - 1`` into an existing blog adds new posts without
touching the others (the README gets the new index lines inserted after the marker; the
existing lines are kept byte for byte).

Usage::

    python bench/make_blog.py OUT_DIR --posts 5000 [--seed 0]
    python bench/make_blog.py OUT_DIR --append 1 [--seed 1]     # one more post

From Python (``bench/`` is not a package; put it on ``sys.path`` or load it with importlib)::

    from make_blog import make_blog
    paths = make_blog(Path("/tmp/blog"), 5000, seed=0)
    make_blog(Path("/tmp/blog"), 1, seed=1, start_index=5000)

Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FOOTER", "MARKER", "make_blog", "post_relpath", "post_title", "main"]

#: Index marker: README index lines start after the line containing it.
MARKER = "### 文章列表"

#: Shared footer, identical to the one ending every post of ``sample_blog/``.
FOOTER = (
    "---\n"
    "\n"
    "#### [欢迎关注作者公众号「数据库笔记」](https://dbnotes.example.com/wechat)\n"
    "#### [PostgreSQL 解决方案集合](https://dbnotes.example.com/solutions)\n"
    "#### [About the author 关于作者](https://dbnotes.example.com/about)\n"
    "#### [本文采用 CC BY-NC-SA 4.0 协议，转载请注明出处](https://dbnotes.example.com/license)\n"
)

START_DATE = dt.date(2016, 1, 4)
POSTS_PER_DAY = 3
_POST_NAME = re.compile(r"^\d{6}/\d{8}_\d{2}\.md$")

# (Chinese name, English name, tag)
TOPICS: list[tuple[str, str, str]] = [
    ("VACUUM 与膨胀治理", "VACUUM and bloat", "vacuum"),
    ("autovacuum 参数调优", "autovacuum tuning", "autovacuum"),
    ("B-tree 索引", "B-tree indexes", "btree"),
    ("GIN 索引", "GIN indexes", "gin"),
    ("BRIN 索引", "BRIN indexes", "brin"),
    ("分区表", "table partitioning", "partitioning"),
    ("逻辑复制", "logical replication", "logical-replication"),
    ("流复制与高可用", "streaming replication and HA", "replication"),
    ("pgbench 压测", "pgbench benchmarking", "pgbench"),
    ("WAL 与 checkpoint", "WAL and checkpoints", "wal"),
    ("连接池 PgBouncer", "PgBouncer connection pooling", "pgbouncer"),
    ("PolarDB 共享存储", "PolarDB shared storage", "polardb"),
    ("PolarDB 并行查询", "PolarDB parallel query", "polardb"),
    ("DuckDB 分析", "DuckDB analytics", "duckdb"),
    ("pg_basebackup 备份", "backups with pg_basebackup", "backup"),
    ("时间点恢复 PITR", "point-in-time recovery", "pitr"),
    ("JSONB 用法", "working with JSONB", "jsonb"),
    ("全文检索", "full text search", "full-text-search"),
    ("执行计划分析", "reading query plans", "explain"),
    ("锁与并发", "locks and concurrency", "locking"),
    ("事务号回卷与冻结", "freezing and XID wraparound", "freeze"),
    ("pg_stat_statements 慢查询", "slow queries with pg_stat_statements", "pg_stat_statements"),
    ("大版本升级", "major version upgrades", "upgrade"),
    ("pg_tidy 在线重整", "online rebuilds with pg_tidy", "pg_tidy"),
]

ZH_TITLE_SUFFIXES = [
    "实战", "原理与实践", "踩坑记录", "性能测试", "最佳实践", "入门", "深入理解",
    "常见问题", "监控与告警", "参数调优", "一次线上故障复盘", "速查表",
]
EN_TITLE_SUFFIXES = [
    "a practical guide", "how it really works", "lessons from production", "a benchmark",
    "best practices", "common pitfalls", "monitoring and alerting", "tuning notes",
    "a postmortem", "a cheat sheet", "the basics", "a deep dive",
]

ZH_WORDS: list[str] = """
数据库 表 索引 事务 查询 优化器 执行计划 统计信息 死元组 膨胀 空间 回收 性能 延迟 吞吐
写入 读取 更新 删除 插入 提交 回滚 锁 等待 冲突 并发 连接 会话 参数 配置 默认值 阈值
内存 磁盘 缓存 页 数据块 日志 归档 备份 恢复 主库 备库 只读节点 复制槽 订阅 发布 分区
父表 子表 主键 唯一约束 外键 序列 版本 升级 兼容性 扩展 插件 监控 告警 巡检 指标 业务
高峰 低峰 凌晨 线上 测试环境 生产环境 大表 小表 热点 冷数据 历史数据 批量 增量 全量 并行
扫描 排序 聚合 连接方式 哈希 嵌套循环 重建 重整 压缩 校验 一致性 可见性 快照 长事务
我们 通常 其实 需要 可以 应该 建议 注意 发现 因为 所以 但是 如果 然后 同时 最后 首先
明显 稳定 简单 复杂 频繁 偶尔 大量 少量 显著 自动 手工 定期 及时 提前 谨慎
""".split()

EN_WORDS: list[str] = """
the a an this that every each some most many few database table index transaction query
planner plan statistics dead tuple bloat space page block buffer cache memory disk latency
throughput write read update delete insert commit rollback lock wait conflict concurrency
connection session setting default threshold checkpoint archive backup restore primary
replica standby slot publication subscription partition parent child key constraint
sequence version upgrade extension monitoring alert metric workload peak night production
staging large small hot cold history batch incremental full parallel scan sort aggregate
join hash loop rebuild compress verify consistency visibility snapshot we usually actually
need can should must notice because so but if then also finally first clearly stable simple
complex frequent rare quickly slowly safely automatically manually regularly early carefully
keeps moves grows shrinks blocks waits writes reads checks measures runs fails works helps
costs saves reduces increases avoids triggers holds releases with without after before during
under over into from on in of for to by about
""".split()

TECH_TERMS: list[str] = [
    "VACUUM", "WAL", "checkpoint", "autovacuum", "pgbench", "PolarDB", "DuckDB", "B-tree",
    "GIN", "BRIN", "JSONB", "PgBouncer", "pg_basebackup", "fillfactor", "HOT", "xmin", "LSN",
    "TPS", "shared_buffers", "work_mem", "pg_tidy", "REINDEX CONCURRENTLY", "EXPLAIN",
]

SECTIONS = {
    "zh": ["## 背景", "## 原理", "## 实践", "## 小结"],
    "en": ["## Background", "## How it works", "## Hands-on", "## Summary"],
    "bi": ["## 背景 / Background", "## 原理 / How it works", "## 实践 / Hands-on", "## 小结 / Summary"],
}

TABLES = ["orders", "order_items", "customers", "events", "metrics", "payments", "users", "logs"]
COLUMNS = ["id", "created_at", "status", "user_id", "amount", "kind", "host", "region", "ts"]


# ---------------------------------------------------------------------------- layout
def post_date(index: int) -> dt.date:
    """Publication date of post number `index` (0-based)."""
    return START_DATE + dt.timedelta(days=index // POSTS_PER_DAY)


def post_relpath(index: int) -> str:
    """Relative POSIX path of post number `index`, e.g. ``201601/20160104_01.md``."""
    day = post_date(index)
    return f"{day:%Y%m}/{day:%Y%m%d}_{index % POSTS_PER_DAY + 1:02d}.md"


def _rng(seed: int, index: int, part: str) -> random.Random:
    # str seeds are hashed with SHA-512 by `random`: stable across runs and PYTHONHASHSEED
    return random.Random(f"blogtune-bench:{seed}:{index}:{part}")


def _meta(seed: int, index: int) -> tuple[str, tuple[str, str, str], str]:
    """(language, topic, title) of a post: cheap, so the README needs no post bodies."""
    rng = _rng(seed, index, "meta")
    lang = rng.choices(["zh", "en", "bi"], weights=[45, 45, 10])[0]
    topic = rng.choice(TOPICS)
    zh = f"{topic[0]}{rng.choice(ZH_TITLE_SUFFIXES)}"
    en = f"{topic[1][0].upper()}{topic[1][1:]}: {rng.choice(EN_TITLE_SUFFIXES)}"
    if rng.random() < 0.15:
        zh, en = f"{zh}（{rng.randint(1, 9)}）", f"{en} (part {rng.randint(1, 9)})"
    title = {"zh": zh, "en": en, "bi": f"{zh} / {en}"}[lang]
    return lang, topic, title


def post_title(index: int, seed: int = 0) -> str:
    """Title of post number `index` as generated with `seed`."""
    return _meta(seed, index)[2]


# ---------------------------------------------------------------------------- text
def _zh_sentence(rng: random.Random) -> str:
    n = rng.randint(6, 14)
    words = rng.choices(ZH_WORDS, k=n)
    if rng.random() < 0.35:
        words[rng.randrange(n)] = f" {rng.choice(TECH_TERMS)} "
    if n > 7 and rng.random() < 0.7:
        words.insert(n // 2, "，")
    return "".join(words).strip().replace(" ，", "，").replace("， ", "，").replace("  ", " ") + "。"


def _en_sentence(rng: random.Random) -> str:
    n = rng.randint(8, 18)
    words = rng.choices(EN_WORDS, k=n)
    if rng.random() < 0.4:
        words[rng.randrange(n)] = rng.choice(TECH_TERMS)
    if n > 10 and rng.random() < 0.5:
        words[n // 2] += ","
    text = " ".join(words)
    if words[0] in EN_WORDS:  # keep identifiers such as pg_tidy or work_mem as written
        text = text[0].upper() + text[1:]
    return text + "."


def _paragraph(rng: random.Random, lang: str) -> str:
    if lang == "zh":
        # mostly Chinese, now and then an English sentence, as Chinese tech blogs do
        return "".join(
            _en_sentence(rng) + " " if rng.random() < 0.08 else _zh_sentence(rng)
            for _ in range(rng.randint(3, 8))
        ).strip()
    if lang == "en":
        return " ".join(_en_sentence(rng) for _ in range(rng.randint(2, 6)))
    zh = "".join(_zh_sentence(rng) for _ in range(rng.randint(1, 3)))
    return zh + "\n" + " ".join(_en_sentence(rng) for _ in range(rng.randint(1, 2)))


def _code_block(rng: random.Random, long: bool = False) -> str:
    kind = "sql" if long else rng.choice(["sql", "sql", "bash", "python"])
    table, c1, c2, c3 = rng.choice(TABLES), *rng.sample(COLUMNS, 3)
    if kind == "sql":
        lines = [
            f"SELECT {c1}, {c2}, count(*) AS n",
            f"FROM {table}",
            f"WHERE {c3} > {rng.randint(1, 100000)}",
            "GROUP BY 1, 2",
            "ORDER BY n DESC",
            f"LIMIT {rng.choice([10, 20, 50, 100])};",
        ]
        if long:  # a single block over the 1,200-character chunk limit
            lines = ["-- per-column report, one branch per table"]
            for i, t in enumerate(TABLES * 3):
                sep = "UNION ALL" if i else ""
                lines += [sep, f"SELECT '{t}' AS tbl, {c1}, count(*) AS n, max({c2}) AS last_{c2}",
                          f"FROM {t} WHERE {c3} IS NOT NULL GROUP BY {c1}"]
            lines = [ln for ln in lines if ln] + ["ORDER BY n DESC;"]
    elif kind == "bash":
        c = rng.choice([16, 32, 64, 128])
        lines = [
            f"pgbench -M prepared -c {c} -j {c // 4} -T {rng.choice([60, 300, 600])} bench",
            f"pg_tidy --dsn \"dbname=shop\" --min-bloat {rng.choice([20, 30, 40])} "
            f"--jobs {rng.randint(1, 4)} --dry-run",
            f"psql -d shop -c \"VACUUM (VERBOSE, ANALYZE) {table};\"",
        ]
    else:
        lines = [
            "import psycopg",
            "",
            f"def count_{table}(dsn: str) -> int:",
            "    with psycopg.connect(dsn) as conn:",
            f"        return conn.execute(\"SELECT count(*) FROM {table}\").fetchone()[0]",
        ]
    return f"```{kind}\n" + "\n".join(lines) + "\n```"


def _yaml_str(text: str) -> str:
    if re.search(r":\s|#|^[\[\]{}&*!|>'\"%@`-]", text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _render_post(seed: int, index: int) -> str:
    lang, topic, title = _meta(seed, index)
    rng = _rng(seed, index, "body")
    parts: list[str] = []
    style = rng.random()
    tags = f"[{topic[2]}, postgresql]" if topic[2] not in ("duckdb",) else "[duckdb, analytics]"
    if style < 0.85:
        parts.append(f"---\ntitle: {_yaml_str(title)}\ndate: {post_date(index)}\ntags: {tags}\n---")
    elif style < 0.92:
        parts.append(f"---\ndate: {post_date(index)}\ntags: {tags}\n---")
    parts.append(f"# {title}")
    background, how, hands_on, summary = SECTIONS[lang]
    parts.append(background)
    parts += [_paragraph(rng, lang) for _ in range(rng.randint(1, 3))]
    parts.append(how)
    parts += [_paragraph(rng, lang) for _ in range(rng.randint(2, 5))]
    parts.append(hands_on)
    long_block = rng.random() < 0.03
    for step in range(rng.randint(1, 4)):
        if rng.random() < 0.5:
            parts.append(f"### {'步骤' if lang != 'en' else 'Step'} {step + 1}")
        parts.append(_paragraph(rng, lang))
        if rng.random() < 0.7 or (long_block and step == 0):
            parts.append(_code_block(rng, long=long_block and step == 0))
    parts.append(summary)
    if lang != "en":
        parts.append("一句话总结：" + _zh_sentence(rng))
    if lang != "zh":
        parts.append("In one sentence: " + _en_sentence(rng))
    parts.append("有问题欢迎留言讨论。" if lang == "zh" else "Questions welcome, as always.")
    parts.append(FOOTER)
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------- README
def _index_line(index: int, seed: int) -> str:
    rel = post_relpath(index)
    return f"##### {rel}   [《{post_title(index, seed)}》]({rel})  "


def _index_lines(indices: Sequence[int], seed: int) -> list[str]:
    """Index lines, newest first, with ``----`` between months (digoal/blog style)."""
    out: list[str] = []
    month = None
    for i in sorted(indices, reverse=True):
        m = post_relpath(i)[:6]
        if month is not None and m != month:
            out.append("----  ")
        month = m
        out.append(_index_line(i, seed))
    return out


def _readme(indices: Sequence[int], seed: int) -> str:
    head = [
        "#### [About the author 关于作者](https://dbnotes.example.com/about)  ",
        "  ",
        "# 数据库笔记 Database notes (synthetic benchmark blog)  ",
        "  ",
        f"Generated by bench/make_blog.py: {len(indices)} posts, seed {seed}.  ",
        "  ",
        "### 置顶文章  ",  # look-alike lines before the marker: not part of the index
    ]
    if indices:
        head.append(_index_line(min(indices), seed))
    head += ["  ", f"{MARKER}  ", "----  "]
    return "\n".join(head + _index_lines(indices, seed) + ["  "]) + "\n"


def _update_readme(readme: Path, new: range, seed: int) -> None:
    """Insert index lines for `new` posts right after the marker; keep every other line."""
    lines = readme.read_text(encoding="utf-8").split("\n")
    hit = next((i for i, ln in enumerate(lines) if MARKER in ln), None)
    if hit is None:
        raise ValueError(f"{readme}: marker {MARKER!r} not found")
    at = hit + 1
    if at < len(lines) and lines[at].strip() == "----":
        at += 1
    added = _index_lines(new, seed)
    following = lines[at] if at < len(lines) else ""
    top = re.match(r"#####\s+(\d{6})/", following)
    if top and added and top.group(1) != post_relpath(new[0])[:6]:
        added.append("----  ")
    lines[at:at] = added
    _write(readme, "\n".join(lines))


# ---------------------------------------------------------------------------- writing
def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def make_blog(out_dir: Path, posts: int, seed: int = 0, start_index: int = 0) -> list[Path]:
    """Write posts ``start_index .. start_index + posts - 1`` under `out_dir`; return their paths.

    With ``start_index == 0`` (or no README yet) ``README.md`` is written from scratch and
    lists the posts written plus, when ``start_index > 0``, the earlier generated-style
    posts found on disk (titled as if made with `seed`). Otherwise the index lines of the new posts
    are inserted after the marker of the existing README, which is otherwise unchanged, and
    existing posts are not touched: this is how a benchmark adds one post to a blog.
    """
    if posts < 0 or start_index < 0:
        raise ValueError("posts and start_index must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    made: set[str] = set()
    for i in range(start_index, start_index + posts):
        rel = post_relpath(i)
        month = rel[:6]
        if month not in made:
            (out_dir / month).mkdir(exist_ok=True)
            made.add(month)
        path = out_dir / rel
        _write(path, _render_post(seed, i))
        written.append(path)
    readme = out_dir / "README.md"
    if start_index == 0:
        _write(readme, _readme(range(posts), seed))
    elif not readme.is_file():
        earlier = [i for i in range(start_index) if (out_dir / post_relpath(i)).is_file()]
        _write(readme, _readme(earlier + list(range(start_index, start_index + posts)), seed))
    elif posts:
        _update_readme(readme, range(start_index, start_index + posts), seed)
    return written


def count_posts(out_dir: Path) -> int:
    """Number of generated-style posts (``YYYYMM/YYYYMMDD_NN.md``) already in `out_dir`."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    return sum(1 for p in out_dir.glob("*/*.md") if _POST_NAME.match(p.relative_to(out_dir).as_posix()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out_dir", type=Path, help="blog folder to create or extend")
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--posts", type=int, help="number of posts to write")
    how.add_argument("--append", type=int, metavar="N",
                     help="add N posts after the ones already in OUT_DIR (others untouched)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--start-index", type=int, default=0,
                    help="number of the first post to write, with --posts (default 0)")
    args = ap.parse_args(argv)
    if args.append is not None:
        start, posts = count_posts(args.out_dir), args.append
    else:
        start, posts = args.start_index, args.posts
    t0 = time.perf_counter()
    paths = make_blog(args.out_dir, posts, seed=args.seed, start_index=start)
    chars = sum(len(p.read_text(encoding="utf-8")) for p in paths)
    print(f"wrote {len(paths)} posts (#{start}..#{start + len(paths) - 1}, {chars:,} characters, "
          f"{chars / max(len(paths), 1):,.0f} per post) to {args.out_dir} "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
