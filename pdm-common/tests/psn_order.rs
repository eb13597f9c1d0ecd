//! RFC 1982 serial-number ordering of 16-bit PSNs, and PSN classification on a flow.

use pdm_common::psn::{PsnOrder, classify, psn_gt, psn_lt};
use proptest::prelude::*;

const HALF: u16 = 1 << 15;

#[test]
fn wraparound_order() {
    assert!(psn_lt(65535, 0));
    assert!(psn_lt(65535, 1));
    assert!(psn_lt(65000, 100));
    assert!(!psn_lt(0, 65535));
    assert!(psn_gt(0, 65535));
    assert!(psn_lt(0, HALF - 1));
    assert!(psn_gt(HALF, 1));
}

#[test]
fn half_distance_is_not_less_either_way() {
    for a in [0u16, 1, 12345, HALF, 65535] {
        let b = a.wrapping_add(HALF);
        assert!(!psn_lt(a, b) && !psn_lt(b, a), "{a} vs {b}");
        assert!(!psn_gt(a, b) && !psn_gt(b, a), "{a} vs {b}");
    }
}

#[test]
fn classify_wraparound() {
    assert_eq!(classify(65535, 0), PsnOrder::InOrder);
    assert_eq!(classify(65535, 2), PsnOrder::Gap(2));
    assert_eq!(classify(65534, 0), PsnOrder::Gap(1));
    assert_eq!(classify(0, 65535), PsnOrder::Reordered);
    assert_eq!(classify(1, 65535), PsnOrder::Reordered);
    assert_eq!(classify(65535, 65535), PsnOrder::Duplicate);
    assert_eq!(classify(0, 0), PsnOrder::Duplicate);
}

#[test]
fn classify_extremes() {
    // Furthest gap that is still "ahead": received = last + 2^15 - 1.
    assert_eq!(classify(10, 10 + HALF - 1), PsnOrder::Gap(HALF - 2));
    // Exactly 2^15 away has no RFC 1982 order: treated as not ahead.
    assert_eq!(classify(10, 10 + HALF), PsnOrder::Reordered);
    assert_eq!(classify(10, 11 + HALF), PsnOrder::Reordered);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn lt_is_irreflexive(a in any::<u16>()) {
        prop_assert!(!psn_lt(a, a));
        prop_assert!(!psn_gt(a, a));
    }

    #[test]
    fn lt_is_antisymmetric(a in any::<u16>(), b in any::<u16>()) {
        prop_assert!(!(psn_lt(a, b) && psn_lt(b, a)));
        prop_assert_eq!(psn_gt(a, b), psn_lt(b, a));
    }

    #[test]
    fn distinct_pairs_are_ordered_unless_half_apart(a in any::<u16>(), b in any::<u16>()) {
        let ordered = psn_lt(a, b) || psn_lt(b, a);
        prop_assert_eq!(ordered, a != b && a.wrapping_sub(b) != HALF);
    }

    #[test]
    fn lt_follows_the_short_way_round(a in any::<u16>(), k in any::<u16>()) {
        let b = a.wrapping_add(k);
        prop_assert_eq!(psn_lt(a, b), (1..HALF).contains(&k));
        // Shifting both by the same amount (across the wrap) keeps the order.
        prop_assert_eq!(psn_lt(a.wrapping_add(40_000), b.wrapping_add(40_000)), psn_lt(a, b));
    }

    #[test]
    fn classify_in_order_and_gaps(last in any::<u16>(), skipped in 0..HALF - 1) {
        let received = last.wrapping_add(1).wrapping_add(skipped);
        let expected = if skipped == 0 { PsnOrder::InOrder } else { PsnOrder::Gap(skipped) };
        prop_assert_eq!(classify(last, received), expected);
    }

    #[test]
    fn classify_older_is_reordered(last in any::<u16>(), back in 1..=HALF) {
        prop_assert_eq!(classify(last, last.wrapping_sub(back)), PsnOrder::Reordered);
    }

    #[test]
    fn classify_agrees_with_lt(last in any::<u16>(), received in any::<u16>()) {
        let order = classify(last, received);
        match order {
            PsnOrder::Duplicate => prop_assert_eq!(received, last),
            PsnOrder::InOrder => prop_assert_eq!(received, last.wrapping_add(1)),
            PsnOrder::Gap(n) => {
                prop_assert!(psn_lt(last.wrapping_add(1), received));
                prop_assert_eq!(received.wrapping_sub(n), last.wrapping_add(1));
            }
            PsnOrder::Reordered => {
                prop_assert_ne!(received, last);
                prop_assert!(!psn_lt(last, received));
            }
        }
    }
}
