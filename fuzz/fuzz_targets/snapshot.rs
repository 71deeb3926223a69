//! Snapshot decoding: any bytes either decode to a filter that re-encodes to exactly
//! the same bytes, or are refused with an error; never a panic, never a filter that
//! differs from what was stored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncely::BloomFilter;

fuzz_target!(|data: &[u8]| {
    let from_slice = BloomFilter::from_snapshot(data);
    let from_reader = BloomFilter::read_snapshot(data);
    assert_eq!(from_slice.is_ok(), from_reader.is_ok(), "the two decoders disagree");
    if let Ok(filter) = from_slice {
        assert_eq!(filter.to_snapshot(), data, "a decoded snapshot re-encodes differently");
    }
});
