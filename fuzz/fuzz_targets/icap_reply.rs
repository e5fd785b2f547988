//! ICAP response bytes from the scanner: the head found as it arrives (split where the first
//! byte says) and found at once agree, stay within the bound, and parse or fail without a
//! panic; whatever parses has a valid status and a meaning (a verdict, OPTIONS or an error).
#![no_main]

use ftpsgate::scan::icap_wire::{
    answer, parse_response_head, HeadFinder, ServiceOptions, WireError, MAX_HEAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let whole = HeadFinder::default().find(rest);
    let mut finder = HeadFinder::default();
    let mut piecewise = Ok(None);
    let mut end = 0;
    while end < rest.len() {
        end = (end + usize::from(split).max(1)).min(rest.len());
        piecewise = finder.find(&rest[..end]);
        if !matches!(piecewise, Ok(None)) {
            break;
        }
    }
    // Found piece by piece, a head or the error comes no later than at once, never elsewhere.
    match (&whole, &piecewise) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b),
        (Err(WireError::HeadTooLong), Err(WireError::HeadTooLong)) | (Ok(None), Ok(None)) => {}
        other => panic!("piecewise and whole disagree: {other:?}"),
    }
    let head = match whole {
        Ok(Some(n)) => {
            assert!(n <= MAX_HEAD);
            &rest[..n]
        }
        _ => rest,
    };
    if let Ok(head) = parse_response_head(head) {
        assert!((100..600).contains(&head.status()));
        let _ = (
            answer(&head),
            ServiceOptions::from_head(&head),
            head.encapsulated(),
            head.threat(),
            head.closes(),
        );
    }
});
