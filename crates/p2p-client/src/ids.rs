//! Short ids: a transfer id given by a person (the 8 characters a table shows, or any unique
//! beginning) resolved to the full id through the control API. Device ids and peer names are
//! resolved by the daemon itself; they are passed on unchanged.

use p2p_proto::control::v1 as pb;

use crate::control::{ControlClient, answer};

/// A shortened id matches several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} matches {} transfers: {}; give more of the id", .candidates.len(), .candidates.join(", "))]
pub struct AmbiguousId {
    /// The id as given.
    pub given: String,
    /// The full ids it begins, sorted.
    pub candidates: Vec<String>,
}

/// Resolves a transfer id given by a person: the full id, or a prefix of exactly one known
/// transfer's id. An unknown id is passed on as given, so the daemon's `NOT_FOUND` reports it;
/// so is any id when the list cannot be had.
///
/// # Errors
/// The prefix matches more than one transfer.
pub async fn resolve_transfer_id(
    api: &mut ControlClient,
    given: &str,
) -> Result<String, AmbiguousId> {
    let Ok(list) = answer(api.list_transfers(pb::ListTransfersRequest {}).await) else {
        return Ok(given.to_owned());
    };
    pick_id(given, list.transfers.iter().map(|t| t.id.as_str()))
}

/// Like [`resolve_transfer_id`], among the offers waiting for a decision.
///
/// # Errors
/// The prefix matches more than one offer.
pub async fn resolve_offer_id(api: &mut ControlClient, given: &str) -> Result<String, AmbiguousId> {
    let Ok(list) = answer(api.list_incoming(pb::ListIncomingRequest {}).await) else {
        return Ok(given.to_owned());
    };
    pick_id(given, list.offers.iter().map(|o| o.transfer_id.as_str()))
}

/// Picks the id `given` stands for among `known` ids: itself if it is one of them (even when it
/// also begins another), else the one id it begins, else `given` unchanged when it begins none.
///
/// # Errors
/// `given` begins more than one id.
pub fn pick_id<'a>(
    given: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Result<String, AmbiguousId> {
    if known.clone().any(|id| id == given) {
        return Ok(given.to_owned());
    }
    let mut candidates: Vec<String> = known
        .filter(|id| id.starts_with(given))
        .map(str::to_owned)
        .collect();
    match candidates.len() {
        0 => Ok(given.to_owned()),
        1 => Ok(candidates.remove(0)),
        _ => {
            candidates.sort();
            candidates.dedup();
            Err(AmbiguousId {
                given: given.to_owned(),
                candidates,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let known = ["abcd1234", "abcd9999", "ffff0000"];
        assert_eq!(pick_id("ffff", known.into_iter()).unwrap(), "ffff0000");
        assert_eq!(pick_id("abcd1234", known.into_iter()).unwrap(), "abcd1234");
        assert_eq!(pick_id("zzz", known.into_iter()).unwrap(), "zzz");
        let err = pick_id("abcd", known.into_iter()).unwrap_err().to_string();
        assert!(
            err.contains("abcd1234") && err.contains("abcd9999") && err.contains("2 transfers"),
            "{err}"
        );
        // An exact id wins even when it is also the prefix of another.
        assert_eq!(
            pick_id("ab", ["ab", "abc"].into_iter()).unwrap(),
            "ab".to_owned()
        );
    }
}
