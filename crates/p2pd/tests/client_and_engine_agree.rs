//! p2p-client checks speed limits without the engine (p2pctl refuses `5` before asking the
//! daemon), so it keeps its own copy of the engine's floor. These tests keep the two equal.

#[test]
fn the_minimum_rate_is_the_engines() {
    assert_eq!(
        p2p_client::units::MIN_RATE,
        p2p_core::transfer::ratelimit::MIN_RATE
    );
}

#[test]
fn rates_are_refused_alike_with_the_same_message() {
    let min = p2p_core::transfer::ratelimit::MIN_RATE;
    for rate in [0, 1, 5, min - 1, min, min + 1, u64::MAX] {
        assert_eq!(
            p2p_client::units::check_rate(rate).map_err(|e| e.to_string()),
            p2p_core::transfer::ratelimit::check_rate(rate).map_err(|e| e.to_string()),
            "{rate}"
        );
    }
}
