# Before/after evaluation and the assets of `snakemake --report report.html`.
# evaluate depends only on the base model, the adapters and the formatted data: retraining
# reruns it, export settings (GGUF type, Modelfile) never do.


rule evaluate:
    input:
        model=rules.convert.output.model,
        adapters=rules.train.output.adapters,
        train=rules.format.output.train,
        valid=rules.format.output.valid,
        test=rules.format.output.test,
    output:
        metrics=model_path("eval/eval_metrics.json"),
        per_article=model_path("eval/per_article.tsv"),
        generations=model_path("eval/generations.jsonl"),
    log:
        log_path("evaluate"),
    conda:
        "../envs/blogtune.yaml"
    threads: all_cores()
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=0,
    params:
        # Score exactly the tokens training scored.
        mask_prompt=config["train"]["mask_prompt"],
        max_seq_length=config["train"]["max_seq_length"],
        batch_size=config["evaluate"]["batch_size"],
        prompts=config["evaluate"]["prompts"],
        max_tokens=config["evaluate"]["max_tokens"],
        temperature=config["evaluate"]["temperature"],
        top_p=config["evaluate"]["top_p"],
        seed=config["evaluate"]["seed"],
        heldout_prompts=config["evaluate"]["heldout_prompts"],
        train_sample_articles=config["evaluate"]["train_sample_articles"],
    script:
        "../scripts/evaluate.py"


rule report_assets:
    input:
        chunks=rules.chunk.output.chunks,
        articles=rules.chunk.output.articles,
        rejects=rules.chunk.output.rejects,
        split_stats=rules.split.output.stats,
        duplicates=rules.split.output.duplicates,
        loss_csv=rules.train.output.loss_csv,
        train_summary=rules.train.output.summary,
        eval_metrics=rules.evaluate.output.metrics,
        per_article=rules.evaluate.output.per_article,
        generations=rules.evaluate.output.generations,
        exam_metrics=rules.exam.output.metrics,
        exam_rows=rules.exam.output.rows,
        gguf_metrics=rules.exam_gguf.output.metrics,
        # Listed with their sizes in the artefacts table.
        mlx_base=rules.convert.output.model,
        adapters=rules.train.output.adapters,
        fused=rules.fuse.output.model,
        gguf=rules.export_gguf.output.gguf,
        modelfile=rules.modelfile.output.modelfile,
    output:
        exam=report(
            model_path("report/exam.html"),
            category="0. The exam",
            caption="../report/exam.rst",
            labels={"page": "exam: base vs fine-tuned"},
        ),
        exam_plot=report(
            model_path("report/exam.png"),
            category="0. The exam",
            caption="../report/exam.rst",
            labels={"page": "exam plot"},
        ),
        before_after=report(
            model_path("report/before_after.html"),
            category="1. Before / after",
            caption="../report/before_after.rst",
            labels={"page": "before/after per split"},
        ),
        perplexity_plot=report(
            model_path("report/article_perplexity.png"),
            category="1. Before / after",
            caption="../report/article_perplexity.rst",
            labels={"page": "per-article perplexity plot"},
        ),
        articles=report(
            model_path("report/articles.html"),
            category="1. Before / after",
            caption="../report/articles.rst",
            labels={"page": "per-article change"},
        ),
        generations=report(
            model_path("report/generations.html"),
            category="1. Before / after",
            caption="../report/generations.rst",
            labels={"page": "generations side by side"},
        ),
        loss_plot=report(
            model_path("report/loss.png"),
            category="2. Training",
            caption="../report/loss.rst",
            labels={"figure": "loss"},
        ),
        lr_plot=report(
            model_path("report/learning_rate.png"),
            category="2. Training",
            caption="../report/learning_rate.rst",
            labels={"figure": "learning rate"},
        ),
        throughput_plot=report(
            model_path("report/throughput.png"),
            category="2. Training",
            caption="../report/throughput.rst",
            labels={"figure": "tokens per second"},
        ),
        corpus=report(
            model_path("report/corpus.html"),
            category="3. Data",
            caption="../report/corpus.rst",
            labels={"page": "corpus"},
        ),
        split=report(
            model_path("report/split.html"),
            category="3. Data",
            caption="../report/split.rst",
            labels={"page": "split"},
        ),
        chunk_plot=report(
            model_path("report/chunk_lengths.png"),
            category="3. Data",
            caption="../report/chunk_lengths.rst",
            labels={"page": "chunk lengths plot"},
        ),
        artefacts=report(
            model_path("report/artefacts.html"),
            category="4. Run",
            caption="../report/artefacts.rst",
            labels={"file": "artefacts"},
        ),
        metrics=report(
            model_path("report/metrics.json"),
            category="4. Run",
            caption="../report/metrics.rst",
            labels={"file": "metrics.json"},
        ),
    log:
        log_path("report_assets"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        base_model=config["base_model"],
        model_slug=MODEL_SLUG,
        data_hash=data_hash(),
        config_hash=config_hash(),
        max_chars=config["chunk"]["max_chars"],
    script:
        "../scripts/report_assets.py"
