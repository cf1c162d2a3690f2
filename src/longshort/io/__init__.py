"""JSONL records, atomic writes, resumable appends and the checks on user files (DESIGN §8).

- `read_jsonl(path, required=..., skip_bad=...)` validates every line and raises `InputError`
  naming the file, line and field; with `skip_bad` bad lines are skipped and counted. Bytes
  that are not UTF-8 and the non-JSON constants `NaN`/`Infinity` are bad lines like any other.
- `ResumableWriter` appends one record per line and flushes it, so an interrupted run loses at
  most the record in flight; `done_ids` lets a stage skip records already written. It never
  deletes a good record: only a torn *last* line (an interrupted append) is truncated; a bad line
  in the middle, or a file that is not this command's output, is refused (`scan_output`).
- `check_output_file` / `check_output_dir`: refuse an output path that a run would damage
  (the input itself, a directory where a file goes, a file that is not ours), before any work.
- `read_yaml(path)`: recipes and config files without aliases, with capped depth and size,
  duplicated keys refused.
- `write_json_atomic` / `write_text_atomic` write through a temp file + rename.

One topic a module: `jsonl` (readers; `iter_jsonl(..., with_lines=True)` yields (line, record)),
`fields` (checks on record fields, `ensure_ids`), `paths` (input and output path checks), `atomic`
(atomic writes), `resumable` (`scan_output`, `ResumableWriter`), `yamlfile` (`read_yaml`). Every
public name is importable from `longshort.io` itself.
"""

from longshort.io.atomic import save_figure_atomic, write_json_atomic, write_jsonl_atomic, write_text_atomic
from longshort.io.fields import (
    MAX_TEXT_CHARS,
    check_answer,
    check_problem_fields,
    check_text,
    check_url,
    ensure_ids,
)
from longshort.io.jsonl import (
    ReadStats,
    iter_jsonl,
    iter_jsonl_numbered,
    iter_lines,
    parse_record,
    read_jsonl,
)
from longshort.io.paths import (
    check_input_file,
    check_new_file,
    check_output_dir,
    check_output_file,
    check_replaceable,
    first_record_has,
    starts_with,
)
from longshort.io.resumable import OutputScan, ResumableWriter, scan_output
from longshort.io.yamlfile import YAML_MAX_BYTES, YAML_MAX_DEPTH, compose_yaml, read_yaml

__all__ = [
    "MAX_TEXT_CHARS", "YAML_MAX_BYTES", "YAML_MAX_DEPTH", "OutputScan", "ReadStats", "ResumableWriter",
    "check_answer", "check_input_file", "check_new_file", "check_output_dir", "check_output_file",
    "check_replaceable", "first_record_has", "starts_with",
    "check_problem_fields", "check_text", "check_url", "compose_yaml", "ensure_ids", "iter_jsonl",
    "iter_jsonl_numbered",
    "iter_lines", "parse_record", "read_jsonl", "read_yaml", "save_figure_atomic", "scan_output",
    "write_json_atomic", "write_jsonl_atomic", "write_text_atomic",
]
