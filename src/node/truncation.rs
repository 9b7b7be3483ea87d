//! Which log generations a node may delete: the truncation decision, free of I/O.
//!
//! A generation may go once nothing can need it again: this node's store holds every record in it
//! durably (its flushed checkpoint is past it), the copy of the other node holds it (the active
//! only: the passive reports the next generation it needs), and it is older than the tail kept for
//! diagnosis. A passive truncates nothing until its copy has been checked against the active's
//! epoch history: a node that was active may hold generations that diverged, and the check needs
//! them to find where (and discards them itself). A copy that is suspended, failed or far behind must not make the active's disk grow
//! without limit: once what is kept only for it passes `max_log_backlog`, the active stops keeping
//! logs for it, and the copy needs a reseed.

/// What the other node's copy needs of this (active) node's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyNeed {
    /// Not heard from in this epoch: keep everything (within `max_log_backlog`).
    Unknown,
    /// It holds everything before this generation and copies on from it.
    From(u64),
    /// Given up past `max_log_backlog`: it needs a reseed, and holds nothing back.
    Abandoned,
}

/// What the decision looks at, for one storage group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The first generation the log still holds.
    pub first_kept: u64,
    /// The highest closed generation (the open one is never truncated).
    pub last_closed: u64,
    /// The generation of this node's flushed store checkpoint: every record before it is in the
    /// store durably. `None` before any apply.
    pub checkpoint: Option<u64>,
    /// How many closed generations to keep however old (for diagnosis).
    pub tail: u64,
    /// What the other node's copy needs; `None` on a passive (it serves no copy).
    pub copy: Option<CopyNeed>,
    /// Bytes of each closed generation from `first_kept` on, in order (at most
    /// `last_closed - first_kept + 1` entries; missing ones count as empty).
    pub sizes: Vec<u64>,
    /// The most bytes kept only for the copy before it is given up.
    pub max_backlog: u64,
    /// The log is known to agree with the active's history: always on the active; on a passive
    /// once its copy was checked against the active's epoch history in this run.
    pub verified: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Delete every generation before this one (no-op if it is `first_kept`).
    pub truncate_before: u64,
    /// The copy is given up from now on (it needs a reseed).
    pub abandon_copy: bool,
}

/// Decides how far the log of one storage group may be truncated.
pub fn decide(i: &Inputs) -> Decision {
    let first = i.first_kept.max(1);
    if !i.verified {
        return Decision {
            truncate_before: first,
            abandon_copy: false,
        };
    }
    let end = i.last_closed.max(first - 1) + 1;
    let own = i.checkpoint.unwrap_or(first).clamp(first, end);
    let tail = end.saturating_sub(i.tail).max(first);
    let mine = own.min(tail);
    let copy = match i.copy {
        None | Some(CopyNeed::Abandoned) => end,
        Some(CopyNeed::Unknown) => first,
        Some(CopyNeed::From(g)) => g.clamp(first, end),
    };
    if copy >= mine {
        return Decision {
            truncate_before: mine,
            abandon_copy: false,
        };
    }
    let held_for_copy: u64 = (copy..mine)
        .map(|g| {
            usize::try_from(g - first)
                .ok()
                .and_then(|k| i.sizes.get(k))
                .copied()
                .unwrap_or(0)
        })
        .sum();
    if held_for_copy > i.max_backlog {
        Decision {
            truncate_before: mine,
            abandon_copy: true,
        }
    } else {
        Decision {
            truncate_before: copy,
            abandon_copy: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs(first: u64, last: u64, checkpoint: Option<u64>, copy: Option<CopyNeed>) -> Inputs {
        Inputs {
            first_kept: first,
            last_closed: last,
            checkpoint,
            tail: 2,
            copy,
            sizes: vec![100; (last + 1).saturating_sub(first) as usize],
            max_backlog: 1_000,
            verified: true,
        }
    }

    #[test]
    fn the_slowest_of_store_copy_and_tail_decides() {
        // Store checkpoint in 8, copy needs 6 onward, tail keeps 9 and 10.
        let d = decide(&inputs(1, 10, Some(8), Some(CopyNeed::From(6))));
        assert_eq!((d.truncate_before, d.abandon_copy), (6, false));
        // The copy is ahead: the store and the tail decide.
        let d = decide(&inputs(1, 10, Some(8), Some(CopyNeed::From(11))));
        assert_eq!(d.truncate_before, 8);
        let d = decide(&inputs(1, 10, Some(11), Some(CopyNeed::From(11))));
        assert_eq!(d.truncate_before, 9, "the tail");
        // A passive serves no copy.
        assert_eq!(decide(&inputs(1, 10, Some(11), None)).truncate_before, 9);
        // Nothing applied yet: nothing goes.
        assert_eq!(decide(&inputs(1, 10, None, None)).truncate_before, 1);
        // A copy not yet checked against the active's history (a node that was active, back as
        // passive) keeps what it holds: the divergence check needs it.
        let mut unchecked = inputs(1, 10, Some(11), None);
        unchecked.verified = false;
        assert_eq!(decide(&unchecked).truncate_before, 1);
    }

    #[test]
    fn an_unknown_copy_holds_everything_until_the_backlog_bound() {
        let d = decide(&inputs(1, 10, Some(11), Some(CopyNeed::Unknown)));
        assert_eq!((d.truncate_before, d.abandon_copy), (1, false));
        // 8 generations of 100 bytes held for it, bound 1,000: kept.
        let mut i = inputs(1, 10, Some(11), Some(CopyNeed::Unknown));
        i.max_backlog = 800;
        assert_eq!(decide(&i).truncate_before, 1);
        i.max_backlog = 799;
        let d = decide(&i);
        assert_eq!((d.truncate_before, d.abandon_copy), (9, true));
        // Once given up it holds nothing back.
        i.copy = Some(CopyNeed::Abandoned);
        assert_eq!(
            decide(&i),
            Decision {
                truncate_before: 9,
                abandon_copy: false
            }
        );
    }

    fn need() -> impl Strategy<Value = Option<CopyNeed>> {
        prop_oneof![
            Just(None),
            Just(Some(CopyNeed::Unknown)),
            Just(Some(CopyNeed::Abandoned)),
            (0u64..40).prop_map(|g| Some(CopyNeed::From(g))),
        ]
    }

    proptest! {
        /// Whatever the inputs: nothing at or past the store's checkpoint, the copy's need (unless
        /// it is given up, and only past the bound), the tail or the open generation goes, and
        /// the log never grows back.
        #[test]
        fn never_deletes_what_is_needed(
            first in 1u64..20,
            span in 0u64..20,
            checkpoint in proptest::option::of(0u64..45),
            tail in 0u64..5,
            copy in need(),
            sizes in proptest::collection::vec(0u64..500, 0..25),
            max_backlog in 0u64..3_000,
            verified in proptest::bool::ANY,
        ) {
            let last = first - 1 + span;
            let i = Inputs { first_kept: first, last_closed: last, checkpoint, tail, copy, sizes, max_backlog, verified };
            let d = decide(&i);
            if !verified {
                prop_assert_eq!(d, Decision { truncate_before: first, abandon_copy: false });
            }
            prop_assert!(d.truncate_before >= first);
            prop_assert!(d.truncate_before <= last + 1, "the open generation stays");
            prop_assert!(d.truncate_before <= checkpoint.unwrap_or(first).max(first));
            prop_assert!(d.truncate_before <= (last + 1).saturating_sub(tail).max(first));
            match copy {
                Some(CopyNeed::From(g)) if !d.abandon_copy => prop_assert!(d.truncate_before <= g.max(first)),
                Some(CopyNeed::Unknown) if !d.abandon_copy => prop_assert_eq!(d.truncate_before, first),
                _ => {}
            }
            if d.abandon_copy {
                let kept_for_copy: u64 = i.sizes.iter().take((d.truncate_before - first) as usize).sum();
                prop_assert!(kept_for_copy > max_backlog);
                prop_assert!(matches!(copy, Some(CopyNeed::From(_)) | Some(CopyNeed::Unknown)));
            }
        }
    }
}
