"""thoughts layer (DESIGN §2, §5): which thoughts of a long chain of thought matter.

- `ingest`: read and validate long-CoT trace files (`load_traces`).
- `steps`: split a trace into steps (`split_steps`).
- `chunking`: group steps into thoughts (`chunk_records`, heuristic / llm / gold).
- `importance`: Monte Carlo importance of each thought (`score_traces`, `METRICS`).
- `coldstart`: two-role dialogues and SFT sets from scored traces (`synthesize`).
- `synthetic`: the planted-importance arithmetic task (`generate`).
- `quality`: boundary F1 and importance AUROC against planted truth.
"""
