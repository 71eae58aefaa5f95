//! Reader tests on the fixtures (real rows cut from the official files), the bundled SST-2 and,
//! when it is there, the full offline copy in `../shared/data`.

use std::path::{Path, PathBuf};

use super::*;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture data root (holds `glue/` and `superglue/`).
fn fixtures() -> PathBuf {
    manifest().join("tests/fixtures")
}

fn read(task_name: &str, split: Split) -> Vec<Example> {
    read_task_split(task(task_name).unwrap(), &fixtures(), split).unwrap()
}

/// A file in its own temporary folder, removed (folder and all) when dropped, also when the
/// test panics.
struct TempFile {
    path: PathBuf,
    _dir: crate::io::fs::TempDir,
}

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A fresh file `name` holding `content` in a per-test temporary folder.
fn temp_file(name: &str, content: &[u8]) -> TempFile {
    let dir = crate::io::fs::TempDir::new("data");
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    TempFile { path, _dir: dir }
}

fn err_of<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
    r.unwrap_err().to_string()
}

fn class(ex: &Example) -> u32 {
    ex.label.and_then(Label::class).unwrap()
}

// ---- GLUE readers on the fixtures ---------------------------------------------------------------

#[test]
fn cola_has_no_header() {
    let train = read("cola", Split::Train);
    assert_eq!(train.len(), 40);
    assert_eq!(
        train[0].text_a,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    assert_eq!(train[0].text_b, None);
    assert_eq!(train[0].label, Some(Label::Class(1)));
    let dev = read("cola", Split::Dev);
    assert_eq!(dev.len(), 20);
    assert_eq!(
        dev[0].text_a,
        "The sailors rode the breeze clear of the rocks."
    );
}

#[test]
fn sst2_reads_header_and_keeps_text() {
    let dev = read("sst2", Split::Dev);
    assert_eq!(dev.len(), 20);
    assert_eq!(
        dev[0].text_a,
        "it 's a charming and often affecting journey . "
    );
    assert_eq!((class(&dev[0]), class(&dev[1])), (1, 0));
    assert_eq!(read("SST-2", Split::Train).len(), 40);
}

#[test]
fn mrpc_bom_is_stripped() {
    let spec = task("mrpc").unwrap();
    let path = spec.split_file(&fixtures(), Split::Train).unwrap();
    assert!(
        std::fs::read(&path)
            .unwrap()
            .starts_with(b"\xef\xbb\xbfQuality")
    );
    let train = read("mrpc", Split::Train);
    assert_eq!(train.len(), 40);
    assert!(
        train[0]
            .text_a
            .starts_with("Amrozi accused his brother , whom he called \" the witness \"")
    );
    assert!(
        train[0]
            .text_b
            .as_deref()
            .unwrap()
            .starts_with("Referring to him as only \" the witness \"")
    );
    assert_eq!((class(&train[0]), class(&train[1])), (1, 0));
    let dev = read("mrpc", Split::Dev);
    assert_eq!(dev.len(), 20);
    // A field that starts with a raw quote: no quoting in GLUE files.
    assert_eq!(
        dev[0].text_b.as_deref(),
        Some("\" The foodservice pie business does not fit our long-term growth strategy .")
    );
}

#[test]
fn stsb_reads_scores() {
    let train = read("stsb", Split::Train);
    assert_eq!(train.len(), 40);
    assert_eq!(train[0].text_a, "A plane is taking off.");
    assert_eq!(
        train[0].text_b.as_deref(),
        Some("An air plane is taking off.")
    );
    assert_eq!(train[0].label, Some(Label::Score(5.0)));
    assert_eq!(train[1].label, Some(Label::Score(3.8)));
    let dev = read("sts-b", Split::Dev);
    assert_eq!((dev.len(), dev[1].label), (20, Some(Label::Score(4.75))));
}

#[test]
fn rte_and_mnli_read_string_labels() {
    let train = read("rte", Split::Train);
    assert_eq!(train.len(), 40);
    assert_eq!(
        train[0].text_a,
        "No Weapons of Mass Destruction Found in Iraq Yet."
    );
    assert_eq!(class(&train[0]), 1); // not_entailment
    let dev = read("rte", Split::Dev);
    assert_eq!(dev.len(), 20);
    assert_eq!(dev.iter().filter(|e| class(e) == 0).count(), 12);

    let m = read("mnli", Split::DevMatched);
    assert_eq!(m.len(), 20);
    assert_eq!(m[0].text_a, "The new rights are nice enough");
    assert_eq!(
        m[0].text_b.as_deref(),
        Some("Everyone really likes the newest benefits ")
    );
    assert_eq!((class(&m[0]), class(&m[1])), (1, 2)); // neutral, contradiction
    let counts = [0, 1, 2].map(|c| m.iter().filter(|e| class(e) == c).count());
    assert_eq!(counts, [5, 5, 10]);
    assert_eq!(read("mnli", Split::DevMismatched).len(), 20);
}

#[test]
fn superglue_readers() {
    let cb = read("cb", Split::Train);
    assert_eq!(cb.len(), 40);
    assert!(cb[0].text_a.starts_with("It was a complex language."));
    assert_eq!(
        cb[0].text_b.as_deref(),
        Some("the language was peeled down")
    );
    assert_eq!(class(&cb[0]), 0); // entailment
    assert_eq!(read("cb", Split::Dev).len(), 20);
    let rte = read("superglue-rte", Split::Dev);
    assert_eq!((rte.len(), class(&rte[0])), (20, 1));
    // BoolQ: bool labels, question first; train comes from the derived file.
    let spec = task("boolq").unwrap();
    let path = spec.split_file(&fixtures(), Split::Train).unwrap();
    assert!(
        path.ends_with("BoolQ/train.from_hf_google_boolq.jsonl"),
        "{}",
        path.display()
    );
    let train = read("boolq", Split::Train);
    assert_eq!(
        train[0].text_a,
        "do iran and afghanistan speak the same language"
    );
    assert_eq!(class(&train[0]), 1); // true
    let val = read("boolq", Split::Dev);
    assert_eq!(val.len(), 10);
    assert!(
        val[0]
            .text_b
            .as_deref()
            .unwrap()
            .starts_with("Ethanol fuel -- ")
    );
}

#[test]
fn unlabeled_test_files_read_with_read_file_only() {
    let dir = fixtures().join("glue");
    let sst = read_file(task("sst2").unwrap(), &dir.join("SST-2/test.tsv")).unwrap();
    assert_eq!(sst.len(), 5);
    assert!(sst.iter().all(|e| e.label.is_none()));
    let rte = read_file(task("rte").unwrap(), &dir.join("RTE/test.tsv")).unwrap();
    assert_eq!(rte.len(), 5);
    assert!(rte[0].text_b.is_some() && rte[0].label.is_none());
    // A "train" split without labels is refused by read_task_split.
    let root = crate::io::fs::TempDir::new("data-unlabelled-train");
    std::fs::create_dir_all(root.join("glue/SST-2")).unwrap();
    std::fs::copy(
        dir.join("SST-2/test.tsv"),
        root.join("glue/SST-2/train.tsv"),
    )
    .unwrap();
    let err = err_of(read_task_split(task("sst2").unwrap(), &root, Split::Train));
    assert!(
        err.ends_with(
            "train.tsv: no labels (no `label` column); the train split of SST-2 must be labelled"
        ),
        "{err}"
    );
    // CoLA's test file has a header although its train/dev files do not.
    let cola_test = temp_file(
        "test.tsv",
        b"index\tsentence\n0\tBill whistled past the house.\n",
    );
    let ex = read_file(task("cola").unwrap(), &cola_test).unwrap();
    assert_eq!(ex.len(), 1);
    assert_eq!(
        (ex[0].text_a.as_str(), ex[0].label),
        ("Bill whistled past the house.", None)
    );
}

#[test]
fn crlf_and_blank_lines_are_accepted() {
    let p = temp_file(
        "dev.tsv",
        b"sentence\tlabel\r\ngood .\t1\r\n\r\nbad .\t0\r\n",
    );
    let ex = read_file(task("sst2").unwrap(), &p).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[1].text_a.as_str(), ex[1].label),
        ("bad .", Some(Label::Class(0)))
    );
}

// ---- bad input: every error names the file, line and what was expected -------------------------

#[test]
fn glue_bad_input_errors() {
    let sst2 = task("sst2").unwrap();
    let err = err_of(read_file(sst2, Path::new("/no/such/dev.tsv")));
    assert_eq!(err, "/no/such/dev.tsv: no such file");

    let p = temp_file("dev.tsv", b"sentence\tlabel\n");
    assert!(err_of(read_file(sst2, &p)).ends_with("dev.tsv: no examples"));
    let p = temp_file("dev.tsv", b"");
    assert!(err_of(read_file(sst2, &p)).ends_with("dev.tsv: no examples"));

    let p = temp_file("dev.tsv", b"text\tlabel\nfine .\t1\n");
    let err = err_of(read_file(sst2, &p));
    assert!(
        err.ends_with("dev.tsv: no `sentence` column; the header has: text, label"),
        "{err}"
    );

    let p = temp_file("dev.tsv", b"sentence\tlabel\nfine .\t1\ngreat .\t2\n");
    let err = err_of(read_file(sst2, &p));
    assert!(
        err.ends_with("dev.tsv:3: label `2` is not one of the allowed labels: 0, 1"),
        "{err}"
    );

    let p = temp_file("dev.tsv", b"sentence\tlabel\nfine .\t1\nno label here\n");
    let err = err_of(read_file(sst2, &p));
    assert!(
        err.ends_with(
            "dev.tsv:3: expected 2 tab-separated fields (as in the header: sentence, label), got 1"
        ),
        "{err}"
    );

    let p = temp_file("train.tsv", b"gj04\t1\t\tFine.\ngj04\t1\tFine.\n");
    let err = err_of(read_file(task("cola").unwrap(), &p));
    assert!(
        err.ends_with(
            "train.tsv:2: expected 4 tab-separated fields (this file has no header), got 3"
        ),
        "{err}"
    );

    let p = temp_file("dev.tsv", b"sentence1\tsentence2\tscore\na\tb\tfive\n");
    let err = err_of(read_file(task("stsb").unwrap(), &p));
    assert!(
        err.ends_with("dev.tsv:2: score `five` is not a finite number"),
        "{err}"
    );

    let p = temp_file("dev.tsv", b"sentence1\tsentence2\tscore\na\tb\t\n");
    let err = err_of(read_file(task("stsb").unwrap(), &p));
    assert!(err.ends_with("dev.tsv:2: empty label"), "{err}");

    let p = temp_file("dev.tsv", b"sentence\tlabel\nok\t1\nbad \xff byte\t0\n");
    let err = err_of(read_file(sst2, &p));
    assert!(
        err.ends_with("dev.tsv:3: invalid UTF-8 at byte 5 of the line; expected a UTF-8 text file"),
        "{err}"
    );
}

#[test]
fn superglue_bad_input_errors() {
    let cb = task("cb").unwrap();
    let p = temp_file("val.jsonl", b"{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\"}\n{\"premise\": \"a\",\n");
    let err = err_of(read_file(cb, &p));
    assert!(
        err.contains("val.jsonl:2: malformed JSON: EOF while parsing"),
        "{err}"
    );
    assert!(err.contains("column"), "serde names the column: {err}");

    let p = temp_file(
        "val.jsonl",
        b"{\"premise\": \"a\", \"hyp\": \"b\", \"label\": \"neutral\"}\n",
    );
    let err = err_of(read_file(cb, &p));
    assert!(
        err.ends_with("val.jsonl:1: no `hypothesis` key; the object has: hyp, label, premise"),
        "{err}"
    );

    let p = temp_file(
        "val.jsonl",
        b"{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"maybe\"}\n",
    );
    let err = err_of(read_file(cb, &p));
    assert!(
        err.ends_with("val.jsonl:1: label `maybe` is not one of the allowed labels: entailment, contradiction, neutral"),
        "{err}"
    );

    let p = temp_file("val.jsonl", b"[1, 2]\n");
    assert!(
        err_of(read_file(cb, &p)).ends_with("val.jsonl:1: expected a JSON object, got an array")
    );

    let p = temp_file("val.jsonl", b"{\"premise\": 3, \"hypothesis\": \"b\"}\n");
    assert!(
        err_of(read_file(cb, &p))
            .ends_with("val.jsonl:1: `premise` is a number, expected a string")
    );

    let p = temp_file(
        "val.jsonl",
        b"{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\"}\n{\"premise\": \"a\", \"hypothesis\": \"b\"}\n",
    );
    let err = err_of(read_file(cb, &p));
    assert!(err.ends_with("val.jsonl:2: no `label` key, but earlier lines have one; the object has: hypothesis, premise"), "{err}");

    let p = temp_file(
        "val.jsonl",
        b"{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": null}\n",
    );
    let err = err_of(read_file(cb, &p));
    assert!(
        err.ends_with("val.jsonl:1: `label` is null, expected a string, number or bool"),
        "{err}"
    );
}

// ---- custom files -------------------------------------------------------------------------------

fn cols(text: &str, pair: Option<&str>, label: &str) -> CustomColumns {
    CustomColumns {
        text: text.into(),
        text_pair: pair.map(Into::into),
        label: label.into(),
    }
}

#[test]
fn custom_csv_with_quotes_and_inferred_classes() {
    let p = fixtures().join("custom/reviews.csv");
    let (ex, classes) =
        read_custom(&p, &cols("review", None, "sentiment"), &CustomLabels::Infer).unwrap();
    assert_eq!(classes, vec!["negative", "neutral", "positive"]);
    assert_eq!(ex.len(), 6);
    assert_eq!(ex[0].text_a, "Great value, fast shipping");
    assert_eq!(ex[0].label, Some(Label::Class(2)));
    assert_eq!(
        ex[1].text_a,
        "It broke after a day, and support said \"not our problem\""
    );
    assert_eq!(ex[3].text_a, "Two lines:\nthe second one is here");
    assert_eq!(ex[4].text_a, "");
    // Fixed classes: the given order wins; an unknown label is named with its line.
    let fixed = CustomLabels::Classes(vec!["positive".into(), "negative".into(), "neutral".into()]);
    let (ex, classes) = read_custom(&p, &cols("review", None, "sentiment"), &fixed).unwrap();
    assert_eq!((ex[0].label, classes.len()), (Some(Label::Class(0)), 3));
    let two = CustomLabels::Classes(vec!["positive".into(), "negative".into()]);
    let err = err_of(read_custom(&p, &cols("review", None, "sentiment"), &two));
    assert!(
        err.ends_with(
            "reviews.csv:5: label `neutral` is not one of the allowed labels: positive, negative"
        ),
        "{err}"
    );
}

#[test]
fn custom_tsv_and_jsonl() {
    let (ex, classes) = read_custom(
        &fixtures().join("custom/nli.tsv"),
        &cols("premise", Some("hypothesis"), "label"),
        &CustomLabels::Infer,
    )
    .unwrap();
    assert_eq!(classes, vec!["contradiction", "entailment", "neutral"]);
    assert_eq!(ex.len(), 4);
    assert_eq!(ex[1].text_b.as_deref(), Some("The cat runs \"fast\"."));
    assert_eq!(ex[1].label, Some(Label::Class(0)));

    let (ex, classes) = read_custom(
        &fixtures().join("custom/scores.jsonl"),
        &cols("sentence1", Some("sentence2"), "score"),
        &CustomLabels::Score,
    )
    .unwrap();
    assert!(classes.is_empty());
    assert_eq!(ex.len(), 4);
    assert_eq!(ex[2].text_a, "Café au lait");
    let scores: Vec<f32> = ex
        .iter()
        .map(|e| e.label.unwrap().score().unwrap())
        .collect();
    assert_eq!(scores, vec![5.0, 1.6, 4.2, 4.0]);
}

#[test]
fn custom_integer_classes_sort_numerically() {
    let p = temp_file("d.csv", b"t,l\na,10\nb,2\nc,2\nd,-1\n");
    let (ex, classes) = read_custom(&p, &cols("t", None, "l"), &CustomLabels::Infer).unwrap();
    assert_eq!(classes, vec!["-1", "2", "10"]);
    assert_eq!(ex[0].label, Some(Label::Class(2)));
    // JSON numbers and bools as labels.
    let p = temp_file(
        "d.jsonl",
        b"{\"t\": \"a\", \"l\": true}\n{\"t\": \"b\", \"l\": false}\n",
    );
    let (ex, classes) = read_custom(&p, &cols("t", None, "l"), &CustomLabels::Infer).unwrap();
    assert_eq!(classes, vec!["false", "true"]);
    assert_eq!(ex[0].label, Some(Label::Class(1)));
}

#[test]
fn custom_bad_input_errors() {
    let c = cols("text", None, "label");
    let err = err_of(read_custom(
        Path::new("/no/such/file.csv"),
        &c,
        &CustomLabels::Infer,
    ));
    assert_eq!(err, "/no/such/file.csv: no such file");

    let p = temp_file("d.parquet", b"");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.parquet: unsupported file type `parquet`; expected .csv, .tsv or .jsonl"),
        "{err}"
    );

    let p = temp_file("d.csv", b"review,label\n\"x\",1\n");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.csv: no `text` column; the header has: review, label"),
        "{err}"
    );

    let p = temp_file("d.csv", b"text,label\n");
    assert!(err_of(read_custom(&p, &c, &CustomLabels::Infer)).ends_with("d.csv: no examples"));
    let p = temp_file("d.csv", b"");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.csv: no examples (the file is empty; expected a header row first)"),
        "{err}"
    );

    let p = temp_file("d.csv", b"text,label\n\"a, b\",1\nc,d,1\n");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.csv:3: expected 2 fields (as in the header: text, label), got 3"),
        "{err}"
    );

    let p = temp_file("d.csv", b"text,label\n\"never closed,1\n");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.csv:2: field 1: the quote opened on this line is never closed"),
        "{err}"
    );

    let p = temp_file("d.tsv", b"text\tlabel\na\t\n");
    assert!(err_of(read_custom(&p, &c, &CustomLabels::Infer)).ends_with("d.tsv:2: empty label"));

    let p = temp_file("d.tsv", b"text\tlabel\na\tx\n");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Score));
    assert!(
        err.ends_with("d.tsv:2: score `x` is not a finite number"),
        "{err}"
    );
    let p = temp_file("d.tsv", b"text\tlabel\na\tNaN\n");
    assert!(
        err_of(read_custom(&p, &c, &CustomLabels::Score)).contains("`NaN` is not a finite number")
    );

    let p = temp_file(
        "d.jsonl",
        b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\" \"label\": 0}\n",
    );
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.contains("d.jsonl:2: malformed JSON: expected `,` or `}` at line 1 column"),
        "{err}"
    );

    let p = temp_file("d.jsonl", b"{\"text\": \"a\"}\n");
    let err = err_of(read_custom(&p, &c, &CustomLabels::Infer));
    assert!(
        err.ends_with("d.jsonl:1: no `label` key; custom files must be labelled"),
        "{err}"
    );
}

// ---- the bundled SST-2 and the full offline copy ------------------------------------------------

#[test]
fn bundled_sst2_dev_reads_all_872_rows() {
    let root = manifest().join("data");
    let spec = task("sst2").unwrap();
    let dev = read_task_split(spec, &root, Split::Dev).unwrap();
    assert_eq!(dev.len(), 872);
    assert_eq!(
        dev[0].text_a,
        "it 's a charming and often affecting journey . "
    );
    let positives = dev.iter().filter(|e| class(e) == 1).count();
    assert_eq!(positives, 444);
    // Tokenize and batch the whole split with the tiny tokenizer.
    let enc = TextEncoder::from_file(&fixtures().join("tokenizer-tiny.json"), 64).unwrap();
    let encoded = enc.encode_batch(&dev).unwrap();
    let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
    assert!(lengths.iter().all(|&l| (3..=64).contains(&l)));
    let batches = batch_order(&lengths, 32, 0, 0, true);
    let first: Vec<&Encoded> = batches[0].iter().map(|&i| &encoded[i]).collect();
    let x = collate(&first, enc.pad_id(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(x.input_ids.dims()[0], first.len());
    let labels: Vec<Option<Label>> = batches[0].iter().map(|&i| dev[i].label).collect();
    assert_eq!(
        label_tensor(&labels, &candle_core::Device::Cpu)
            .unwrap()
            .dims(),
        &[first.len()]
    );
}

/// Every registered split of the full offline copy reads with the row count its README gives.
/// Skipped (with a note) when `../shared/data` is not there.
#[test]
fn shared_offline_copy_reads_with_official_counts() {
    let root = manifest().join("../shared/data");
    if !root.join("glue").is_dir() {
        eprintln!("skipped: {} not found", root.display());
        return;
    }
    let want: &[(&str, Split, usize)] = &[
        ("cola", Split::Train, 8551),
        ("cola", Split::Dev, 1043),
        ("sst2", Split::Train, 67349),
        ("sst2", Split::Dev, 872),
        ("mrpc", Split::Train, 3668),
        ("mrpc", Split::Dev, 408),
        ("stsb", Split::Train, 5749),
        ("stsb", Split::Dev, 1500),
        ("qqp", Split::Dev, 40430),
        ("mnli", Split::DevMatched, 9815),
        ("mnli", Split::DevMismatched, 9832),
        ("qnli", Split::Dev, 5463),
        ("rte", Split::Train, 2490),
        ("rte", Split::Dev, 277),
        ("wnli", Split::Train, 635),
        ("wnli", Split::Dev, 71),
        ("boolq", Split::Train, 9427),
        ("boolq", Split::Dev, 3270),
        ("cb", Split::Train, 250),
        ("cb", Split::Dev, 56),
        ("superglue-rte", Split::Train, 2490),
        ("superglue-rte", Split::Dev, 277),
    ];
    for &(name, split, n) in want {
        let ex = read_task_split(task(name).unwrap(), &root, split)
            .unwrap_or_else(|e| panic!("{name} {split}: {e}"));
        assert_eq!(ex.len(), n, "{name} {split}");
    }
    for name in ["mnli", "qqp", "qnli"] {
        let err = err_of(read_task_split(task(name).unwrap(), &root, Split::Train));
        assert!(err.contains("is absent from the offline copy"), "{err}");
    }
    // The unlabeled test files read too.
    for (name, file, n) in [
        ("sst2", "glue/SST-2/test.tsv", 1821),
        ("cola", "glue/CoLA/test.tsv", 1063),
        ("mrpc", "glue/MRPC/test.tsv", 1725),
        ("stsb", "glue/STS-B/test.tsv", 1379),
        ("qnli", "glue/QNLI/test.tsv", 5463),
        ("rte", "glue/RTE/test.tsv", 3000),
        ("wnli", "glue/WNLI/test.tsv", 146),
        ("cb", "superglue/CB/test.jsonl", 250),
        ("boolq", "superglue/BoolQ/test.jsonl", 3245),
    ] {
        let ex = read_file(task(name).unwrap(), &root.join(file)).unwrap();
        assert_eq!(ex.len(), n, "{file}");
        assert!(ex.iter().all(|e| e.label.is_none()), "{file}");
    }
}

#[test]
fn read_texts_for_prediction() {
    let ex = read_texts(&fixtures().join("custom/reviews.csv"), "review", None).unwrap();
    assert_eq!(ex.len(), 6);
    assert!(ex.iter().all(|e| e.label.is_none()));
    let ex = read_texts(
        &fixtures().join("custom/scores.jsonl"),
        "sentence1",
        Some("sentence2"),
    )
    .unwrap();
    assert_eq!(ex[0].text_b.as_deref(), Some("An air plane is taking off."));
    let p = temp_file("in.txt", b"a fine film\n\nawful .\n");
    let ex = read_texts(&p, "ignored", None).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[1].text_a, "awful .");
    let p = temp_file("in.txt", b"\n");
    assert!(err_of(read_texts(&p, "t", None)).ends_with("in.txt: no examples"));
    let p = temp_file("in.md", b"x\n");
    let err = err_of(read_texts(&p, "t", None));
    assert!(
        err.ends_with("unsupported file type `md`; expected .csv, .tsv, .jsonl or .txt"),
        "{err}"
    );
    let err = err_of(read_texts(&fixtures().join("custom/nli.tsv"), "text", None));
    assert!(
        err.ends_with("nli.tsv: no `text` column; the header has: premise, hypothesis, label"),
        "{err}"
    );
}
