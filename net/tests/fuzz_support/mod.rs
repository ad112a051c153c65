//! Structure-aware property fuzzing shared by `mesh/tests/fuzz_decoders.rs`
//! and `tests/fuzz_config.rs`: inputs are random bytes, valid encodings
//! with byte-level mutations (bit flips, interesting bytes, truncations,
//! removals, insertions, duplications, splices of two encodings, tampered
//! varint and big-endian length prefixes), and JSON documents whose values
//! are replaced by hostile ones (wrong types, huge and odd numbers, deep
//! nesting, long strings, control characters).
//!
//! Every target runs [`cases`] cases: `SCOUT_FUZZ_CASES` when set,
//! otherwise [`FUZZ_CASES_DEFAULT`]. A target passes when no input panics;
//! [`run_target`] prints how many cases ran and how fast.

#![allow(dead_code)]

use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

/// Cases per target in a normal `cargo test` run: enough to reach every
/// error path of these small decoders, and cheap enough that all targets
/// together stay well under a minute in a debug build.
pub const FUZZ_CASES_DEFAULT: u32 = 10_000;

/// Mutations applied to one seed at most: more than a few and the input is
/// as random as random bytes, which have their own share of cases.
const MUTATIONS_MAX: usize = 6;

/// Bytes of a purely random input at most: longer than every fixed-size
/// header, shorter than anything that would slow a case down.
const RANDOM_BYTES_MAX: usize = 1024;

/// Bytes inserted by one mutation at most.
const INSERT_BYTES_MAX: usize = 32;

/// Depth of the nesting a JSON mutation builds at most: far beyond
/// serde_json's recursion limit (128), which must answer with an error.
const JSON_DEPTH_MAX: usize = 4096;

/// Characters of a long JSON string at most.
const JSON_STRING_CHARS_MAX: usize = 64 * 1024;

/// Bytes of a JSON document made by repeating arrays at most: room for
/// the longest hostile string, while a case stays cheap.
const JSON_INPUT_BYTES_MAX: usize = 512 * 1024;

/// The environment variable that sets the number of cases per target.
pub const FUZZ_CASES_ENV: &str = "SCOUT_FUZZ_CASES";

/// Cases per target.
pub fn cases() -> u32 {
    std::env::var(FUZZ_CASES_ENV)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(FUZZ_CASES_DEFAULT)
}

/// The proptest configuration of every target: [`cases`] cases, no
/// regression files (failing inputs are kept as named regression tests).
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs one target: [`cases`] inputs from `strategy` through `check`.
/// Panics (failing the test) with the smallest failing input when a case
/// panics or fails its check; otherwise prints the cases run, the wall
/// time and zero panics.
pub fn run_target<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let started = Instant::now();
    let result = runner.run(&strategy, check);
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            let n_cases = cases();
            eprintln!(
                "fuzz {name}: {n_cases} cases in {seconds:.2} s ({:.0} cases/s), panics: 0",
                f64::from(n_cases) / seconds.max(1e-9)
            );
        }
        Err(failure) => panic!("fuzz {name}: {failure}"),
    }
}

/// One byte-level change to an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit { at: usize, bit: u8 },
    /// Overwrite one byte with a value that often sits on a boundary.
    SetByte { at: usize, value: u8 },
    /// Cut the input.
    Truncate { at: usize },
    /// Remove a range.
    Remove { at: usize, len: usize },
    /// Insert random bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Repeat a range in place.
    Duplicate { at: usize, len: usize },
    /// Write a postcard varint (length prefixes, counts, integers).
    Varint { at: usize, value: u64 },
    /// Write a 4-byte big-endian length.
    BigEndian { at: usize, value: u32 },
}

const INTERESTING_BYTES: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, b'\r', b'\n'];
const INTERESTING_NUMBERS: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xffff,
    0x10000,
    4 * 1024 * 1024,
    u32::MAX as u64,
    i64::MAX as u64,
    u64::MAX,
];

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => proptest::sample::select(&INTERESTING_NUMBERS[..]),
        1 => any::<u64>(),
        2 => 0u64..512,
    ]
}

/// One random mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<usize>(), prop_oneof![proptest::sample::select(&INTERESTING_BYTES[..]), any::<u8>()])
            .prop_map(|(at, value)| Mutation::SetByte { at, value }),
        2 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<usize>(), random_bytes())
            .prop_map(|(at, mut bytes)| {
                bytes.truncate(INSERT_BYTES_MAX);
                Mutation::Insert { at, bytes }
            }),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        2 => (any::<usize>(), number()).prop_map(|(at, value)| Mutation::Varint { at, value }),
        1 => (any::<usize>(), number()).prop_map(|(at, value)| Mutation::BigEndian {
            at,
            value: value as u32,
        }),
    ]
}

/// `value` as a postcard (LEB128) varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Overwrites `bytes[at..]` with `patch`, growing the input if needed.
fn overwrite(bytes: &mut Vec<u8>, at: usize, patch: &[u8]) {
    let end = at + patch.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[at..end].copy_from_slice(patch);
}

/// Applies `mutation` to `bytes`.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    let pos = |at: usize| if len == 0 { 0 } else { at % len };
    match mutation {
        Mutation::FlipBit { at, bit } if len > 0 => bytes[pos(*at)] ^= 1 << bit,
        Mutation::SetByte { at, value } if len > 0 => bytes[pos(*at)] = *value,
        Mutation::FlipBit { .. } | Mutation::SetByte { .. } => {}
        Mutation::Truncate { at } => bytes.truncate(at % (len + 1)),
        Mutation::Remove { at, len: n } => {
            let start = pos(*at);
            let end = (start + n).min(len);
            bytes.drain(start..end);
        }
        Mutation::Insert { at, bytes: extra } => {
            let start = at % (len + 1);
            bytes.splice(start..start, extra.iter().copied());
        }
        Mutation::Duplicate { at, len: n } => {
            let start = pos(*at);
            let end = (start + n).min(len);
            let copy: Vec<u8> = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Varint { at, value } => overwrite(bytes, pos(*at), &varint(*value)),
        Mutation::BigEndian { at, value } => overwrite(bytes, pos(*at), &value.to_be_bytes()),
    }
}

/// Random bytes, expanded from a seed: drawing each byte through proptest
/// costs more than the decoders do in a debug build.
pub fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    (0..RANDOM_BYTES_MAX, any::<u64>()).prop_map(|(len, mut state)| {
        (0..len)
            .map(|_| {
                // splitmix64: cheap and good enough to spread bits.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    })
}

/// Inputs for a byte decoder: random bytes, a seed with mutations, or a
/// splice of two seeds (the head of one, the tail of another) with
/// mutations.
pub fn bytes_input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "a target needs at least one seed");
    let n_seeds = seeds.len();
    let mutated = (
        0..n_seeds,
        proptest::collection::vec(mutation(), 1..MUTATIONS_MAX),
    )
        .prop_map({
            let seeds = seeds.clone();
            move |(idx, mutations)| {
                let mut bytes = seeds[idx].clone();
                for mutation in &mutations {
                    apply(&mut bytes, mutation);
                }
                bytes
            }
        });
    let spliced = (
        0..n_seeds,
        0..n_seeds,
        any::<usize>(),
        any::<usize>(),
        proptest::collection::vec(mutation(), 0..2),
    )
        .prop_map(move |(a, b, cut_a, cut_b, mutations)| {
            let head = &seeds[a][..cut_a % (seeds[a].len() + 1)];
            let tail = &seeds[b][cut_b % (seeds[b].len() + 1)..];
            let mut bytes = [head, tail].concat();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            bytes
        });
    prop_oneof![
        1 => random_bytes(),
        6 => mutated,
        2 => spliced,
    ]
}

/// A hostile JSON token, spliced into a document as raw text so it can be
/// what a `serde_json::Value` cannot hold (numbers beyond f64, nesting
/// beyond the recursion limit).
#[derive(Debug, Clone)]
pub enum Hostile {
    /// Raw JSON text.
    Raw(String),
    /// `[[[…]]]` or `{"a":{"a":…}}` this deep.
    Deep { depth: usize, objects: bool },
    /// A string of `n` copies of `unit`.
    Long { unit: String, n: usize },
}

const RAW_TOKENS: [&str; 24] = [
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e400",
    "-1e400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "4294967296",
    "65536",
    "\"\"",
    "[]",
    "{}",
    "[null]",
    "{\"\":null}",
    "\"\\u0000\\u001b[31m\\u0085\\u009b\\ud800\"",
    "\"\\ud800\"",
    "\"@@\\n..//\\\\\"",
    "\"\\u202e\\u200b\\ufeff\"",
];

/// Lengths of long strings: mostly around the limits that names and
/// fields have (tens to thousands of characters), sometimes the maximum.
fn long_length() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1usize..300,
        2 => 300usize..5_000,
        1 => Just(JSON_STRING_CHARS_MAX),
    ]
}

const LONG_UNITS: [&str; 5] = ["a", "\\u0000", "\\u001b", "é", "../"];

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        6 => proptest::sample::select(&RAW_TOKENS[..]).prop_map(|raw| Hostile::Raw(raw.to_owned())),
        2 => any::<i64>().prop_map(|n| Hostile::Raw(n.to_string())),
        2 => random_bytes().prop_map(|bytes| {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
            Hostile::Raw(serde_json::to_string(&text).unwrap_or_default())
        }),
        1 => (1..JSON_DEPTH_MAX, any::<bool>()).prop_map(|(depth, objects)| Hostile::Deep { depth, objects }),
        1 => (proptest::sample::select(&LONG_UNITS[..]), long_length())
            .prop_map(|(unit, n)| Hostile::Long { unit: unit.to_owned(), n }),
    ]
}

impl Hostile {
    fn text(&self) -> String {
        match self {
            Hostile::Raw(raw) => raw.clone(),
            Hostile::Deep { depth, objects } => {
                if *objects {
                    format!("{}1{}", "{\"a\":".repeat(*depth), "}".repeat(*depth))
                } else {
                    format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth))
                }
            }
            Hostile::Long { unit, n } => format!("\"{}\"", unit.repeat(*n)),
        }
    }
}

/// One change to a JSON document.
#[derive(Debug, Clone)]
pub enum JsonMutation {
    /// Replace the value at this pre-order index with a hostile token.
    Replace { at: usize, with: Hostile },
    /// Remove the member or element at this pre-order index.
    Remove { at: usize },
    /// Add a member (to an object) or element (to an array) at this index.
    Add {
        at: usize,
        key: String,
        with: Hostile,
    },
    /// Repeat the elements of the array at this index `n` times.
    Repeat { at: usize, n: usize },
}

/// Member names: the ones the config and status files use, in several
/// cases, and a few that no file uses.
const KEYS: [&str; 16] = [
    "",
    "version",
    "name",
    "command",
    "cwd",
    "workspace",
    "agents",
    "seeds",
    "discovery",
    "node_name",
    "mesh_id",
    "bootstrap",
    "Peer",
    "ID",
    "TailscaleIPs",
    "x",
];

/// A member name.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&KEYS[..]).prop_map(str::to_owned),
        1 => random_bytes().prop_map(|bytes| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(12)]).into_owned()
        }),
    ]
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        6 => (any::<usize>(), hostile()).prop_map(|(at, with)| JsonMutation::Replace { at, with }),
        2 => any::<usize>().prop_map(|at| JsonMutation::Remove { at }),
        2 => (any::<usize>(), key(), hostile())
            .prop_map(|(at, key, with)| JsonMutation::Add { at, key, with }),
        1 => (any::<usize>(), 2usize..300).prop_map(|(at, n)| JsonMutation::Repeat { at, n }),
    ]
}

/// The marker a hostile token replaces in the serialized document.
fn marker(idx: usize) -> String {
    format!("@@hostile{idx}@@")
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(members) => members.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The node at pre-order index `at` (0 is the root).
fn node_at(value: &mut Value, at: usize) -> Option<&mut Value> {
    if at == 0 {
        return Some(value);
    }
    let mut rest = at - 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(members) => members.values_mut().collect(),
        _ => return None,
    };
    for child in children {
        let size = count_nodes(child);
        if rest < size {
            return node_at(child, rest);
        }
        rest -= size;
    }
    None
}

/// Applies JSON mutations to `document` and serializes it, splicing the
/// hostile tokens in as raw text.
pub fn mutate_json(mut document: Value, mutations: &[JsonMutation]) -> Vec<u8> {
    let mut tokens = Vec::new();
    for mutation in mutations {
        let n_nodes = count_nodes(&document);
        match mutation {
            JsonMutation::Replace { at, with } => {
                if let Some(node) = node_at(&mut document, at % n_nodes) {
                    *node = Value::String(marker(tokens.len()));
                    tokens.push(with.text());
                }
            }
            JsonMutation::Remove { at } => {
                if let Some(node) = node_at(&mut document, at % n_nodes) {
                    match node {
                        Value::Array(items) if !items.is_empty() => {
                            let idx = at % items.len();
                            items.remove(idx);
                        }
                        Value::Object(members) if !members.is_empty() => {
                            let key = members.keys().nth(at % members.len()).cloned();
                            if let Some(key) = key {
                                members.remove(&key);
                            }
                        }
                        _ => {}
                    }
                }
            }
            JsonMutation::Add { at, key, with } => {
                if let Some(node) = node_at(&mut document, at % n_nodes) {
                    let placeholder = Value::String(marker(tokens.len()));
                    match node {
                        Value::Array(items) => items.push(placeholder),
                        Value::Object(members) => {
                            members.insert(key.clone(), placeholder);
                        }
                        _ => continue,
                    }
                    tokens.push(with.text());
                }
            }
            JsonMutation::Repeat { at, n } => {
                // Repeating copies the hostile tokens inside too: the
                // number of copies is cut so the document stays below
                // JSON_INPUT_BYTES_MAX.
                let n_bytes = render(&document, &tokens).len().max(1);
                let n_copies = (*n).min(JSON_INPUT_BYTES_MAX / n_bytes);
                if let Some(Value::Array(items)) = node_at(&mut document, at % n_nodes)
                    && !items.is_empty()
                {
                    let copy = items.clone();
                    for _ in 1..n_copies {
                        items.extend(copy.iter().cloned());
                    }
                }
            }
        }
    }
    render(&document, &tokens).into_bytes()
}

/// The document as text, with each marker replaced by its token.
fn render(document: &Value, tokens: &[String]) -> String {
    let mut text = serde_json::to_string(document).unwrap_or_default();
    for (idx, token) in tokens.iter().enumerate() {
        text = text.replace(&format!("\"{}\"", marker(idx)), token);
    }
    text
}

/// Inputs for a JSON decoder: hostile documents built from the seeds,
/// sometimes with byte-level mutations on top, and everything
/// [`bytes_input`] makes of the seeds' text.
pub fn json_input(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "a target needs at least one seed");
    let texts: Vec<Vec<u8>> = seeds
        .iter()
        .map(|seed| serde_json::to_vec_pretty(seed).unwrap_or_default())
        .collect();
    let n_seeds = seeds.len();
    let structured = (
        0..n_seeds,
        proptest::collection::vec(json_mutation(), 1..MUTATIONS_MAX),
        proptest::collection::vec(mutation(), 0..2),
    )
        .prop_map(move |(idx, json_mutations, byte_mutations)| {
            let mut bytes = mutate_json(seeds[idx].clone(), &json_mutations);
            for mutation in &byte_mutations {
                apply(&mut bytes, mutation);
            }
            bytes
        });
    prop_oneof![
        3 => structured,
        1 => bytes_input(texts),
    ]
}
