#!/usr/bin/env python
"""N questions over M videos: `LongVUEngine` (the language model in vLLM's engine) against `generate`, same prompts,
one run.

* **generate**: what `longvu ask VIDEO q1 q2 ...` does: each video encoded once (`encode_videos`), then
  `LongVUForConditionalGeneration.generate(video_features=...)` for each question in turn (batch of one, greedy).
* **vllm**: `LongVUEngine.generate` with all the questions at once: each video encoded once, each question compressed
  for its prompt, then vLLM schedules the questions together (continuous batching, paged attention).

Both use the same converted folder (a random model written here: tiny towers with LongVU's input geometry, a Qwen2
language model of the widths and depth given on the command line, float32) and the same prompts, and must give the
same greedy tokens (checked, `identical_answers`). Timed: from the videos' pixels to the answers, the engine's start
excluded (reported separately). vLLM runs its engine core in its own process, as in serving, so scripts need a main
guard. CPU figures are marked `"device": "cpu"`; on a GPU pass `--device cuda --dtype bfloat16`.

    python benchmarks/vllm_throughput.py --videos 3 --questions 4 --output benchmarks/results/vllm_throughput_cpu.json
    python benchmarks/vllm_throughput.py --quick          # tiny sizes: a smoke test of the script, not a measurement
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=3, help="M videos")
    parser.add_argument("--questions", type=int, default=4, help="questions per video (N = M x this)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per answer (every answer this long)")
    parser.add_argument("--hidden-size", type=int, default=896, help="LLM width (Qwen2-0.5B's: 896)")
    parser.add_argument("--heads", type=int, default=14, help="attention heads (head size = width / heads)")
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=4864)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--vocab-words", type=int, default=32000, help="vocabulary size, about")
    parser.add_argument("--max-context-length", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the encoder and generate; vLLM: its platform)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for each contender")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.questions, args.frames, args.max_new_tokens = 2, 2, 6, 4
        args.hidden_size, args.heads, args.kv_heads, args.intermediate_size = 64, 2, 1, 128
        args.llm_layers, args.vocab_words, args.max_context_length = 1, 64, 1024
    return args


def write_model(folder: Path, args) -> None:
    """A random converted folder: the package's tiny towers, a Qwen2 LLM of the asked widths, tokenizer + template."""
    import torch

    from longvu_hf import LongVUForConditionalGeneration, tiny
    from longvu_hf.processing.processing_longvu import get_chat_template

    tokenizer = tiny.tiny_tokenizer(num_filler_words=args.vocab_words)
    tokenizer.chat_template = get_chat_template("qwen2")
    text_config = {
        "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size, "num_hidden_layers": args.llm_layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "max_position_embeddings": 8192,
        "tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }
    config = tiny.tiny_config(
        tokenizer.convert_tokens_to_ids("<video>"), tokenizer.convert_tokens_to_ids("<image>"), len(tokenizer),
        text_config=text_config, max_context_length=args.max_context_length,
    )
    torch.manual_seed(0)
    LongVUForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def questions_for(video_index: int, count: int) -> list[str]:
    from longvu_hf.tiny import WORDS

    words = [w for w in WORDS if w.isalpha()]
    return [" ".join(words[(video_index * 7 + q * 3 + k) % len(words)] for k in range(4 + 3 * q)) + " ?"
            for q in range(count)]


def run_generate(model, engine, videos, questions, args) -> tuple[list[list[int]], float]:
    """`longvu ask` with several questions: each video encoded once, one generate per question."""
    import torch

    answers = []
    start = time.perf_counter()
    with torch.inference_mode():
        for pixels, asked in zip(videos, questions):
            features = model.encode_videos(**pixels)
            for question in asked:
                ids = torch.tensor([engine.prompt_token_ids(question)], device=model.device)
                output = model.generate(input_ids=ids, video_features=features, max_new_tokens=args.max_new_tokens,
                                        min_new_tokens=args.max_new_tokens, do_sample=False)
                answers.append(output[0, ids.shape[1]:].tolist())
    return answers, time.perf_counter() - start


def run_vllm(engine, videos, questions, args) -> tuple[list[list[int]], float]:
    from vllm import SamplingParams

    from longvu_hf.integrations.vllm import LongVURequest

    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, min_tokens=args.max_new_tokens)
    requests = [LongVURequest(video=pixels, question=q) for pixels, asked in zip(videos, questions) for q in asked]
    start = time.perf_counter()
    answers = engine.generate(requests, params)
    return [a.token_ids for a in answers], time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # vLLM's CPU worker reads it; same count for both
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch

    from benchmark_utils import machine_info, write_json
    from long_video import synthetic_video

    from longvu_hf import LongVUForConditionalGeneration
    from longvu_hf.integrations.vllm import LongVUEngine

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    videos = [synthetic_video(args.frames, seed=i) for i in range(args.videos)]
    questions = [questions_for(i, args.questions) for i in range(args.videos)]
    with tempfile.TemporaryDirectory() as folder:
        write_model(Path(folder), args)
        started = time.perf_counter()
        engine = LongVUEngine(folder, dtype=args.dtype, encoder_device=args.device, max_model_len=4096,
                              max_num_seqs=max(8, args.videos * args.questions), seed=0,
                              enforce_eager=args.quick)  # --quick: no compilation, a smoke test starts faster
        engine_start_s = time.perf_counter() - started
        model = LongVUForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(args.device).eval()
        run_vllm(engine, videos[:1], [questions[0][:1]], args)  # warm-up of both (first-call costs)
        run_generate(model, engine, videos[:1], [questions[0][:1]], args)
        vllm_answers, vllm_s = run_vllm(engine, videos, questions, args)
        generate_answers, generate_s = run_generate(model, engine, videos, questions, args)
        visual_tokens = [a.compression.num_visual_tokens for a in engine.generate(
            [(pixels, q) for pixels, asked in zip(videos, questions) for q in asked[:1]])]
        import vllm

        info = machine_info(args.device)
        info["vllm"] = vllm.__version__
        num_questions = args.videos * args.questions
        tokens = num_questions * args.max_new_tokens
        result = {
            "machine": info,
            "note": "CPU figures (2 shared cores, other jobs running): a ratio for this machine, not a GPU serving "
            "figure" if args.device == "cpu" else "GPU figures",
            "quick": args.quick,
            "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
            "num_questions": num_questions,
            "visual_tokens_per_video_first_question": visual_tokens,
            "engine_start_s": round(engine_start_s, 2),
            "generate": {"seconds": round(generate_s, 3), "answer_tokens_per_s": round(tokens / generate_s, 2),
                         "questions_per_s": round(num_questions / generate_s, 3)},
            "vllm": {"seconds": round(vllm_s, 3), "answer_tokens_per_s": round(tokens / vllm_s, 2),
                     "questions_per_s": round(num_questions / vllm_s, 3)},
            "speedup_vllm_over_generate": round(generate_s / vllm_s, 2),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine
            "identical_answers": vllm_answers == generate_answers,
        }
        engine.llm.llm_engine.engine_core.shutdown()
    if args.output:
        write_json(Path(args.output), result)
    print(f"{num_questions} questions over {args.videos} videos, {args.max_new_tokens} tokens each: generate "
          f"{generate_s:.2f} s, vLLM {vllm_s:.2f} s ({result['speedup_vllm_over_generate']}x); identical answers: "
          f"{result['identical_answers']}")
    return result


if __name__ == "__main__":  # vLLM starts processes that import this file: the main guard keeps them from re-running it
    main()
