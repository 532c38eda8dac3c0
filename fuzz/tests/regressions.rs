//! One test per input kept in `fuzz/regressions/`: each once broke a parser's promise (a
//! panic, an allocation far past its cap, time quadratic in its length) and must now be
//! refused, quickly, saying why, within the target's cap.

use std::path::Path;

use neuromfa_common::checkpoint::{safetensors_data_start, safetensors_metadata};
use neuromfa_common::torch::{pickle, zip};
use neuromfa_common::ModelShape;
use neuromfa_coordinator::SweepSpec;
use neuromfa_fuzz::{alloc::Counting, check, regressions_dir, target};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The kept input `name` of `target_name`, after checking it within the target's cap.
fn kept(target_name: &str, name: &str) -> Vec<u8> {
    let target = target(target_name).expect("a target");
    let path = regressions_dir(target).join(name);
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check(target, &input);
    input
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn a_config_whose_hidden_size_overflows_four_times_itself_is_refused() {
    let input = kept("config_json", "hidden-size-near-2-64.json");
    let refused = ModelShape::from_config_json(text(&input)).unwrap_err();
    assert!(
        refused.contains("`hidden_size` is 18446744073709551615"),
        "{refused}"
    );
}

#[test]
fn a_config_with_dimensions_past_the_caps_is_refused() {
    let input = kept("config_json", "dimensions-past-the-caps.json");
    let refused = ModelShape::from_config_json(text(&input)).unwrap_err();
    assert!(refused.contains("above the largest supported"), "{refused}");
}

#[test]
fn a_spec_counting_four_billion_seeds_is_refused_before_listing_them() {
    let input = kept("sweep_spec", "four-billion-seeds.toml");
    let refused = SweepSpec::from_toml(text(&input), Path::new("spec.toml")).unwrap_err();
    assert!(refused.to_string().contains("at most 100000"), "{refused}");
}

#[test]
fn a_spec_whose_q_grid_has_1e306_values_is_refused() {
    let input = kept("sweep_spec", "q-grid-of-1e306-values.toml");
    let refused = SweepSpec::from_toml(text(&input), Path::new("spec.toml")).unwrap_err();
    assert!(
        refused.to_string().contains("more than 10001 values"),
        "{refused}"
    );
}

#[test]
fn a_safetensors_header_whose_offsets_sum_past_2_to_the_64_is_refused() {
    let input = kept("safetensors_header", "offsets-summing-past-2-64");
    // Eight tensors of 2^61 - 8 bytes each: 8 + header + data overflows a u64 (a panic in
    // the safetensors crate's own check, in builds with overflow checks).
    let file = &input[8..];
    let len = file.len() as u64;
    let start = safetensors_data_start(file, len).unwrap();
    let refused = safetensors_metadata(&file[8..start as usize], start, len).unwrap_err();
    assert!(refused.contains("but the file is"), "{refused}");
}

#[test]
fn a_pickle_declaring_a_4gb_string_in_1kb_is_refused() {
    let input = kept("pickle", "declares-a-4gb-string");
    let refused = pickle::parse_state_dict(&input).unwrap_err();
    assert!(
        refused.to_string().contains("ends in the middle"),
        "{refused}"
    );
}

#[test]
fn a_pickle_nested_100000_deep_is_refused() {
    let input = kept("pickle", "nested-100000-deep");
    let refused = pickle::parse_state_dict(&input).unwrap_err();
    assert!(refused.to_string().contains("nested deeper"), "{refused}");
}

#[test]
fn a_pickle_naming_one_long_memoised_key_for_20000_storages_is_refused() {
    let input = kept("pickle", "memoised-key-named-by-20000-storages");
    let refused = pickle::parse_state_dict(&input).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("copies more of its shared values"),
        "{refused}"
    );
}

#[test]
fn a_pickle_making_an_ordered_dict_of_a_memoised_list_20000_times_is_refused() {
    let input = kept("pickle", "ordered-dict-of-10000-pairs-made-20000-times");
    let refused = pickle::parse_state_dict(&input).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("copies more of its shared values"),
        "{refused}"
    );
}

#[test]
fn a_zip_claiming_65535_entries_in_a_46_byte_directory_is_refused() {
    let input = kept("zip", "65535-entries-in-46-bytes");
    let refused = zip::parse_tail(&input, 0, input.len() as u64).unwrap_err();
    assert!(refused.to_string().contains("cannot fit"), "{refused}");
}

#[test]
fn a_content_range_past_2_to_the_64_is_no_range() {
    let input = kept("content_range", "last-past-u64");
    assert_eq!(neuromfa_hub::headers::content_range(text(&input)), None);
}

/// Found by libFuzzer: the target's own check computed `last + 1` for a range ending at
/// byte 2^64 - 1; the parser itself handles it.
#[test]
fn a_content_range_ending_at_byte_2_to_the_64_minus_1_parses() {
    let input = kept("content_range", "last-byte-at-2-64-minus-1");
    let range = neuromfa_hub::headers::content_range(text(&input)).unwrap();
    assert_eq!((range.first, range.last), (0, u64::MAX));
    assert!(!range.is(&(0..u64::MAX), u64::MAX));
}

/// Found by libFuzzer: `config` took the quoted key `"0[61111]"` for a path into an array
/// and allocated it up to that index (5.9 MB for 14 bytes; `"0[4000000000]"` would ask for
/// 100 GB).
#[test]
fn a_spec_key_that_indexes_an_array_is_refused_before_config_reads_it() {
    let input = kept("sweep_spec", "quoted-key-indexing-an-array-at-61111");
    let refused = SweepSpec::from_toml(text(&input), Path::new("spec.toml")).unwrap_err();
    assert!(
        refused.to_string().contains("is not a key of a sweep spec"),
        "{refused}"
    );
    let huge = "\"0[4000000000]\" = 1\n";
    assert!(SweepSpec::from_toml(huge, Path::new("spec.toml")).is_err());
}

/// A `429` naming a wait of 2^64 − 1 seconds: added to the instant it came at, it overflowed
/// (a panic), and slept on, it stopped the worker for good. Now taken as an hour.
#[test]
fn a_rate_limit_naming_a_wait_of_2_to_the_64_seconds_is_taken_as_an_hour() {
    let input = kept("rate_limit", "wait-of-2-64-minus-1-seconds");
    let (_, window) = neuromfa_hub::headers::rate_limit(text(&input)).unwrap();
    assert_eq!(window.resets_in, neuromfa_hub::headers::MAX_NAMED_WAIT);
    assert_eq!(window.remaining, 0);
}

/// Found by libFuzzer: 341 `key=value` parameters in 1,534 bytes were collected into a
/// vector of 32 bytes each before any was looked at, past the target's cap of 8 bytes a
/// byte; the parameters are now read where they stand.
#[test]
fn a_rate_limit_of_hundreds_of_parameters_is_read_without_collecting_them() {
    let input = kept("rate_limit", "341-parameters-in-1534-bytes");
    assert_eq!(neuromfa_hub::headers::rate_limit(text(&input)), None);
}
