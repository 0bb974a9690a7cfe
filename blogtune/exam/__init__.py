"""The exam: closed-book items about the blog's posts, scored on the base and the fine-tuned model.

items     cloze items built from the posts (+ teacher/view QA items when present)
answers   answer matching: normalised exact match, token F1, abstention, n-gram loops
stats     Wilson and paired-bootstrap intervals
scoring   multiple choice by log-likelihood and batched greedy answers (MLX, CPU fast path)
run       the whole exam for base vs fine-tuned
llamacpp  the shipped GGUF in llama.cpp, with the Modelfile's template, stops and sampling
report    metrics headline, tables, plots and the side-by-side page
"""
