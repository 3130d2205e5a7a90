//! Every method of the catalog through three front ends: the library (`catalog::run`), the
//! CLI (`glassbox <method> --json`) and the dashboard's API (`POST /api/<method>`), with the
//! same input and options (`tests/catalog_cases.json`, which the Python suite runs too). The
//! envelopes must agree: method, model, input, metric, options (every default filled in) and
//! warnings equal, every number of the result within 1e-5. A method added to the catalog without
//! a case fails here.

mod common;

use std::path::PathBuf;

use common::{cli_json, fixtures, post, same_envelope, Server};
use glassbox::methods::catalog::{self, Context, InputSpec};
use glassbox::sae::Sae;
use glassbox::schema::OptionSchema;
use glassbox::Model;
use serde_json::Value;

fn cases() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/catalog_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixture(v: &Value) -> String {
    fixtures().join(v.as_str().unwrap()).to_str().unwrap().to_string()
}

/// The input's keys as the CLI's flags.
fn input_flags(input: &Value) -> Vec<String> {
    let mut a = Vec::new();
    for (k, v) in input.as_object().unwrap() {
        a.push(format!("--{k}"));
        a.push(match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        });
    }
    a
}

/// A value as the envelope writes it: heads given as `"L1H2"` become `[1, 2]`.
fn as_json(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(as_json).collect()),
        Value::String(s) => {
            let head = s.strip_prefix('L').and_then(|r| r.split_once('H')).and_then(|(l, h)| Some((l.parse::<u64>().ok()?, h.parse::<u64>().ok()?)));
            match head {
                Some((l, h)) => Value::from(vec![l, h]),
                None => v.clone(),
            }
        }
        v => v.clone(),
    }
}

#[test]
fn every_method_gives_one_envelope_through_the_library_the_cli_and_the_api() {
    let all = cases();
    let (model_path, sae_path, b_path) = (fixture(&all["model"]), fixture(&all["sae"]), fixture(&all["model_b"]));
    let set_path = fixture(&all["transcoders"]);
    let set = glassbox::sae::set::TranscoderSet::load(set_path.as_ref()).unwrap();
    let model = Model::load(model_path.as_ref()).unwrap();
    let model_b = Model::load(b_path.as_ref()).unwrap();
    let sae = Sae::load(sae_path.as_ref(), None).unwrap();
    let server = Server::start(&model_path, &["--sae", &sae_path, "--model-b", &b_path, "--transcoders", &set_path]);
    let mut ran = Vec::new();
    for entry in catalog::CATALOG {
        let name = entry.name();
        let case = &all["cases"][name];
        assert!(case.is_object(), "`{name}` has no case in tests/catalog_cases.json: add one");
        let (input, options) = (&case["input"], &case["options"]);

        // The library.
        let spec: InputSpec = serde_json::from_value(input.clone()).unwrap();
        let needs = entry.needs();
        let cx = Context { model: &model, sae: needs.sae.then_some(&sae), model_b: needs.model_b.then_some(&model_b), transcoders: needs.transcoders.then_some(&set) };
        let lib = serde_json::to_value(catalog::run(*entry, &cx, &spec, options).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap();

        // The options come back resolved: every field of the schema, the given ones as given.
        let fields: Vec<&str> = entry.fields().iter().map(|f| f.name).collect();
        let resolved: Vec<&str> = lib["options"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(resolved, sorted, "{name}: resolved options");
        for (k, v) in options.as_object().unwrap() {
            // Numbers come back as written; heads given as text ("L1H2") as [layer, head].
            assert_eq!(lib["options"][k], as_json(v), "{name}: option `{k}`");
        }
        assert!(lib["model"]["sha256"].as_str().is_some_and(|s| s.len() == 64), "{name}: the model's sha256");
        assert_eq!(lib["method"], name);

        // The CLI.
        let mut args = vec![name.to_string(), "--model".into(), model_path.clone(), "--json".into()];
        args.extend(input_flags(input));
        args.extend(case["cli"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()));
        if needs.sae {
            args.extend(["--sae".to_string(), sae_path.clone()]);
        }
        if needs.transcoders {
            args.extend(["--transcoders".to_string(), set_path.clone()]);
        }
        if needs.model_b {
            args.extend(["--model-b".to_string(), b_path.clone()]);
        }
        same_envelope(&cli_json(&args), &lib, &format!("{name}: CLI against the library"));

        // The dashboard's API: the input's keys and the options in one body.
        let mut body = input.clone();
        body["options"] = options.clone();
        let (status, api) = post(&format!("{}/api/{name}", server.url), &body.to_string());
        assert_eq!(status, 200, "{name}: {api}");
        same_envelope(&api, &lib, &format!("{name}: API against the library"));
        ran.push(name);
    }
    assert_eq!(ran.len(), catalog::CATALOG.len());
    let known: Vec<&str> = all["cases"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in known {
        assert!(ran.contains(&k), "tests/catalog_cases.json has a case for `{k}`, which is not in the catalog");
    }
}

/// Every option field and input field a front end shows has help text (the CLI's flags are
/// checked in `methods.rs`; the API and the dashboard's forms show these).
#[test]
fn every_api_field_has_help() {
    for d in catalog::describe() {
        assert!(!d.summary.trim().is_empty(), "`{}` has no summary", d.name);
        for f in d.options.iter().chain(&d.input_fields) {
            assert!(!f.help.trim().is_empty(), "`{}` option `{}` has no help", d.name, f.name);
        }
    }
    for f in InputSpec::fields() {
        assert!(!f.help.trim().is_empty(), "input field `{}` has no help", f.name);
    }
}
