"""Each dataset format adapter on its hand-written fixture, every kind of source, and bad rows named precisely."""

import gzip
import json
from pathlib import Path

import pytest

from pipeline.data.records import DataError
from pipeline.settings import SourceSettings
from pipeline.data.sources import load_source

FIXTURES = Path(__file__).parent / "fixtures"
HH = str(FIXTURES / "hh_rlhf.jsonl")
ULTRAFEEDBACK = str(FIXTURES / "ultrafeedback_binarized.jsonl")
TLDR_SFT = str(FIXTURES / "tldr_sft.jsonl")
TLDR_COMPARISONS = str(FIXTURES / "tldr_comparisons.jsonl")
CHAT = str(FIXTURES / "chat_messages.jsonl")
CSV_PAIRS = str(FIXTURES / "sft_pairs.csv")

BOOK_CONTEXT = (
    "User: Can you recommend a book about the history of mathematics?\n\n"
    "Assistant: Sure, are you interested in a particular period?\n\n"
    "User: Mostly ancient Greece and the Islamic golden age."
)
BIKE_CONTEXT = (
    "User: My bike chain keeps slipping. What should I check?\n\n"
    "Assistant: Does it slip when you pedal hard or all the time?\n\n"
    "User: Mostly when I pedal hard uphill."
)


def load(source, data_format, kind, **settings):
    return load_source(SourceSettings(source=source, format=data_format, **settings), kind).records


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_hh_rlhf_dialogues_split_into_shared_prompt_and_final_answers():
    assert load(HH, "hh_rlhf", "preference") == [
        {"prompt": "How do I keep basil alive indoors?",
         "chosen": "Give it a sunny window with at least six hours of light, water when the top of the soil is dry, "
                   "and pinch off flower buds so it keeps growing leaves.",
         "rejected": "Basil is a plant."},
        {"prompt": "What is a good way to learn to juggle?",
         "chosen": "Start with one ball.",
         "rejected": "Start with one ball tossed from hand to hand at eye height, add a second once the throws are "
                     "steady, and only then try three."},
        {"prompt": BOOK_CONTEXT,
         "chosen": "Try 'The History of Mathematics: A Brief Course' by Roger Cooke; it covers both periods in readable chapters.",
         "rejected": "I don't know any books."},
        {"prompt": BIKE_CONTEXT,
         "chosen": "Check chain wear.",
         "rejected": "Slipping under load usually means a worn chain or cassette, or a gear cable that needs tension; "
                     "measure the chain with a wear gauge first."},
        {"prompt": "How long should I boil an egg for a soft yolk?",
         "chosen": "About six minutes from when the egg goes into boiling water, then cool it in cold water.",
         "rejected": "Boil it for twenty minutes to be safe, then it will be soft."},
        {"prompt": "Why is the sky blue?",
         "chosen": "Air scatters short blue wavelengths of sunlight more than red ones.",
         "rejected": "Because the ocean reflects onto it, which is why the sky is blue everywhere on Earth, including "
                     "deserts far from any sea."},
    ]


def test_hh_rlhf_chosen_dialogue_as_conversational_sft_and_as_prompts():
    sft = load(HH, "hh_rlhf", "sft")
    assert len(sft) == 6
    assert sft[2] == {
        "prompt": BOOK_CONTEXT,
        "completion": "Try 'The History of Mathematics: A Brief Course' by Roger Cooke; it covers both periods in readable chapters.",
        "messages": [
            {"role": "user", "content": "Can you recommend a book about the history of mathematics?"},
            {"role": "assistant", "content": "Sure, are you interested in a particular period?"},
            {"role": "user", "content": "Mostly ancient Greece and the Islamic golden age."},
            {"role": "assistant", "content": "Try 'The History of Mathematics: A Brief Course' by Roger Cooke; it covers both periods in readable chapters."},
        ],
    }
    assert [r["prompt"] for r in load(HH, "hh_rlhf", "prompts")] == [
        "How do I keep basil alive indoors?", "What is a good way to learn to juggle?", BOOK_CONTEXT, BIKE_CONTEXT,
        "How long should I boil an egg for a soft yolk?", "Why is the sky blue?",
    ]


def test_ultrafeedback_binarized_message_lists():
    assert load(ULTRAFEEDBACK, "ultrafeedback", "preference") == [
        {"prompt": "Write a haiku about autumn rain.",
         "chosen": "Cold rain on the roof\nmaple leaves slide down the glass\nthe kettle whistles",
         "rejected": "Autumn rain is wet and it falls from clouds in the autumn season."},
        {"prompt": "Explain what a hash table is in one paragraph.",
         "chosen": "A hash table stores key-value pairs in an array, using a hash function to turn each key into an "
                   "index so lookups take constant time on average.",
         "rejected": "It is a table."},
        {"prompt": "Give me three names for a grey cat.",
         "chosen": "Ash, Pebble, Smoke.",
         "rejected": "Some people name grey cats after weather, colours or famous people, and there are many options "
                     "you could consider for a grey cat."},
        {"prompt": "Translate 'good morning' into Spanish.",
         "chosen": "Buenos días.",
         "rejected": "Buenas noches, which is how Spanish speakers greet each other when they wake up."},
    ]
    assert load(ULTRAFEEDBACK, "ultrafeedback", "prompts")[3] == {"prompt": "Translate 'good morning' into Spanish."}
    assert load(ULTRAFEEDBACK, "ultrafeedback", "sft")[3] == {
        "prompt": "Translate 'good morning' into Spanish.",
        "completion": "Buenos días.",
        "messages": [{"role": "user", "content": "Translate 'good morning' into Spanish."},
                     {"role": "assistant", "content": "Buenos días."}],
    }


TLDR_ROOMMATE_PROMPT = (
    "Summarize this Reddit post in a sentence or two.\n\n"
    "SUBREDDIT: r/relationships\n"
    "TITLE: My roommate never does the dishes\n"
    "POST: We agreed to alternate weeks but for two months I have done every week. I left a note and she ignored it. "
    "How do I bring it up without a fight?"
)


def test_tldr_posts_to_summaries_and_comparisons_to_pairs():
    sft = load(TLDR_SFT, "tldr", "sft")
    assert [r["completion"] for r in sft] == [
        "Roommate ignores our dish schedule and my note; how do I raise it calmly?",
        "New job, no debt, rent is a third of income: how much should I save each month?",
        "Outer knee aches after runs over 15 km; shoes have 900 km on them.",
    ]
    assert sft[0]["prompt"] == TLDR_ROOMMATE_PROMPT
    pairs = load(TLDR_COMPARISONS, "tldr", "preference")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("Roommate skips her dish weeks and ignored my note, how do I talk to her?", "dishes"),
        ("First job, 3000 a month, 1000 rent, no debt: what share to save?", "I want to buy a car."),
        ("Knee hurts after long runs.",
         "My knee hurts on the outside for a day after any run longer than 15 km, shorter runs are fine, and my "
         "shoes are old, maybe I should stop running entirely forever."),
    ]
    # the comparison's nested post renders exactly like the SFT post, so SFT and RM see one prompt
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in sft]
    assert load(TLDR_COMPARISONS, "tldr", "prompts") == [{"prompt": r["prompt"]} for r in sft]


def test_chat_messages_train_to_final_assistant_turn_and_drop_trailing_user_turns():
    sft = load(CHAT, "messages", "sft")
    assert [(r["prompt"], r["completion"]) for r in sft] == [
        ("What is the capital of Australia?", "Canberra."),
        ("System: You are a concise cooking assistant.\n\nUser: How do I stop pasta from sticking?\n\n"
         "Assistant: Use plenty of boiling salted water and stir during the first two minutes.\n\n"
         "User: Should I add oil to the water?",
         "No, oil coats the pasta and keeps sauce from clinging; stirring is enough."),
        ("User: Name a prime number between 20 and 30.\n\nAssistant: 23 is prime.\n\nUser: And another one?",
         "29 is prime too."),
        ("Suggest a name for a sailing boat.", "How about 'Second Wind'?"),
        ("Convert 5 kilometres to miles.", "5 kilometres is about 3.1 miles."),
        ("User: Give me a synonym for 'happy'.\n\nAssistant: Cheerful.\n\nUser: One more, please.", "Content."),
    ]
    assert sft[2]["messages"][-1] == {"role": "assistant", "content": "29 is prime too."}  # "Thanks!" dropped
    assert len(sft[1]["messages"]) == 5


def test_csv_with_quoted_commas_and_newlines():
    assert load(CSV_PAIRS, "records", "sft") == [
        {"prompt": "What does CSV stand for?", "completion": "Comma-separated values."},
        {"prompt": "List two colours, separated by a comma.", "completion": "Red, blue."},
        {"prompt": "Write a two-line poem.", "completion": "Roses bloom in June,\nand fade before the moon."},
    ]


def test_saved_datasets_directory_with_split_and_field_mapping(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in Path(HH).read_text().splitlines()]
    renamed = [{"better": r["chosen"], "worse": r["rejected"], "id": i} for i, r in enumerate(rows)]
    DatasetDict({"train": Dataset.from_list(renamed[:4]), "test": Dataset.from_list(renamed[4:])}).save_to_disk(tmp_path / "hh")
    fields = {"chosen": "better", "rejected": "worse"}
    test_split = load(str(tmp_path / "hh"), "hh_rlhf", "preference", split="test", fields=fields)
    assert test_split == load(HH, "hh_rlhf", "preference")[4:]
    assert len(load(str(tmp_path / "hh"), "hh_rlhf", "preference", fields=fields, max_records=3)) == 3
    with pytest.raises(DataError, match=r"has no split 'validation'; splits: train, test"):
        load(str(tmp_path / "hh"), "hh_rlhf", "preference", split="validation", fields=fields)
    with pytest.raises(DataError, match=r"row 1, field 'chosen': missing column \(columns present: better, id, worse"):
        load(str(tmp_path / "hh"), "hh_rlhf", "preference")


def test_hub_dataset_goes_through_load_dataset_with_split_subset_and_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_json(ULTRAFEEDBACK)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_source(
        SourceSettings(source="hub:HuggingFaceH4/ultrafeedback_binarized", format="ultrafeedback",
                       split="train_prefs", dataset_revision="abc123", max_records=2),
        "preference",
    )
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized",
                      {"name": None, "data_dir": None, "split": "train_prefs", "revision": "abc123"})]
    assert loaded.records == load(ULTRAFEEDBACK, "ultrafeedback", "preference")[:2]
    assert loaded.description == "hub:HuggingFaceH4/ultrafeedback_binarized split train_prefs@abc123 (ultrafeedback)"


def test_hub_failure_is_a_data_error_naming_the_source(monkeypatch):
    import datasets

    def offline(path, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hub:Anthropic/hh-rlhf: could not load from the hub \(ConnectionError: no network\)"):
        load("hub:Anthropic/hh-rlhf", "hh_rlhf", "preference")


@pytest.mark.parametrize(
    ("data_format", "kind", "row", "expected"),
    [
        ("hh_rlhf", "preference", {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi"},
         r"row 2 \(line 2\), field 'rejected': dialogue has no assistant turn"),
        ("hh_rlhf", "preference", {"chosen": "\n\nHuman: hi\n\nAssistant: hello"},
         r"row 2 \(line 2\), field 'rejected': missing column"),
        ("hh_rlhf", "preference", {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": 7},
         r"row 2 \(line 2\), field 'rejected': expected a string, got int"),
        ("hh_rlhf", "preference", {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: bye\n\nAssistant: no"},
         r"row 2 \(line 2\), field 'rejected': chosen and rejected dialogues differ before their final answers \(at turn 1\)"),
        ("hh_rlhf", "preference", {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: hello "},
         r"row 2 \(line 2\), field 'rejected': chosen and rejected answers are identical"),
        ("hh_rlhf", "sft", {"chosen": "just some text"}, r"row 2 \(line 2\), field 'chosen': no 'Human:' / 'Assistant:' turns"),
        ("hh_rlhf", "sft", {"chosen": "\n\nHuman: hi\n\nAssistant:   "}, r"row 2 \(line 2\), field 'chosen': message 2 \(assistant\) has empty content"),
        ("ultrafeedback", "preference", {"chosen": "not a list", "rejected": []},
         r"row 2 \(line 2\), field 'chosen': expected a list of messages, got str"),
        ("ultrafeedback", "preference",
         {"chosen": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "rejected": []},
         r"row 2 \(line 2\), field 'chosen': message 2 has role 'bot'"),
        ("messages", "sft", {"messages": [{"role": "user", "content": "only a question"}]},
         r"row 2 \(line 2\), field 'messages': dialogue has no assistant turn"),
        ("messages", "sft", {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]},
         r"row 2 \(line 2\), field 'messages': dialogue must start with a user turn"),
        ("tldr", "sft", {"post": "text", "summary": ""}, r"row 2 \(line 2\), field 'summary': empty string"),
        ("tldr", "preference", {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 2},
         r"row 2 \(line 2\), field 'choice': expected 0 or 1, got 2"),
        ("tldr", "preference", {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"note": "b"}], "choice": 0},
         r"row 2 \(line 2\), field 'summaries\[1\].text': missing field"),
        ("tldr", "preference", {"info": {"title": "t"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
         r"row 2 \(line 2\), field 'info.post': missing field"),
        ("records", "sft", {"prompt": "q", "completion": None}, r"row 2 \(line 2\), field 'completion': expected a string, got NoneType"),
    ],
)
def test_bad_rows_are_rejected_naming_source_row_and_field(tmp_path, data_format, kind, row, expected):
    good = {
        "hh_rlhf": {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
        "ultrafeedback": {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
        "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "tldr": {"post": "p", "summary": "s", "info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
        "records": {"prompt": "q", "completion": "a"},
    }[data_format]
    source = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=expected) as raised:
        load(source, data_format, kind)
    assert str(raised.value).startswith(source)


def test_skip_mode_leaves_bad_rows_out_and_reports_them(tmp_path):
    rows = [json.loads(line) for line in Path(HH).read_text().splitlines()]
    rows.insert(1, {"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"})
    source = write_jsonl(tmp_path / "hh_with_a_tie.jsonl", rows)
    loaded = load_source(SourceSettings(source=source, format="hh_rlhf", on_bad_row="skip"), "preference")
    assert loaded.records == load(HH, "hh_rlhf", "preference")
    assert loaded.n_rows_read == 7
    assert loaded.skipped == [f"{source}, row 2 (line 2), field 'rejected': chosen and rejected answers are identical"]


def test_a_missing_local_source_that_looks_like_a_hub_id_says_how_to_name_one(tmp_path):
    with pytest.raises(DataError, match=r"^Anthropic/hh-rlhf: no such file or directory; for a hub dataset write `hub:Anthropic/hh-rlhf`"):
        load("Anthropic/hh-rlhf", "hh_rlhf", "preference")
    with pytest.raises(DataError, match=r"is a directory but not one written by datasets' save_to_disk"):
        load(str(tmp_path), "hh_rlhf", "preference")


def test_a_format_that_cannot_make_the_kind_fails_before_reading():
    with pytest.raises(ValueError, match=r"format 'messages' cannot produce preference data; formats that can: records, hh_rlhf"):
        load("hub:never/read", "messages", "preference")


def test_csv_with_a_short_row_names_row_and_column(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("prompt,completion\nq,a\nonly a prompt\n")
    with pytest.raises(DataError, match=r"short.csv, row 2, field 'completion': row ends before column 'completion'"):
        load(str(path), "records", "sft")


@pytest.mark.parametrize("fixture,data_format,kind,name", [
    (HH, "hh_rlhf", "preference", "train.jsonl.gz"),
    (ULTRAFEEDBACK, "ultrafeedback", "preference", "train.json.gz"),
    (CSV_PAIRS, "records", "sft", "pairs.csv.gz"),
])
def test_gzip_compressed_files_read_as_the_plain_ones(tmp_path, fixture, data_format, kind, name):
    compressed = tmp_path / name
    compressed.write_bytes(gzip.compress(Path(fixture).read_bytes()))
    assert load(str(compressed), data_format, kind) == load(fixture, data_format, kind)


def test_a_bad_row_inside_a_gzip_file_is_named_by_file_row_line_and_field(tmp_path):
    rows = [json.loads(line) for line in Path(HH).read_text().splitlines()]
    rows.insert(2, {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: bye\n\nAssistant: no"})
    source = tmp_path / "train.jsonl.gz"
    source.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode()))
    with pytest.raises(DataError) as raised:
        load(str(source), "hh_rlhf", "preference")
    assert str(raised.value) == (
        f"{source}, row 3 (line 3), field 'rejected': "
        "chosen and rejected dialogues differ before their final answers (at turn 1)"
    )
    loaded = load_source(SourceSettings(source=str(source), format="hh_rlhf", on_bad_row="skip"), "preference")
    assert loaded.n_rows_read == len(rows) and len(loaded.skipped) == 1 and "row 3 (line 3)" in loaded.skipped[0]


def test_an_unsupported_file_type_lists_every_supported_one(tmp_path):
    source = tmp_path / "train.gz"
    source.write_bytes(gzip.compress(Path(HH).read_bytes()))
    with pytest.raises(DataError) as raised:
        load(str(source), "hh_rlhf", "preference")
    assert str(raised.value) == (
        f"{source}: unsupported file type '.gz'; use .jsonl, .json, .jsonl.gz, .json.gz, .parquet, .csv or .csv.gz"
    )
