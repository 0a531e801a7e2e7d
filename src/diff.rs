//! Comparing what a walk found with the online set of the previous run.
//!
//! The comparison is a pure function from (previous online set, observations) to a
//! [`Plan`] of writes, so every rule here is tested without a store. Every write the plan
//! asks for is an idempotent "move forward" upsert, which is what makes a rerun after a
//! killed run give the same result as an uninterrupted one.

use crate::scan::Observation;
use crate::time::Millis;

/// A user the previous run saw online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnlineRow {
    /// The user id.
    pub user: Box<str>,
    /// The first heartbeat of the open session.
    pub since: Millis,
    /// The newest heartbeat known durably.
    pub last_heartbeat: Millis,
}

/// A closed online period to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedSession {
    /// The user id.
    pub user: Box<str>,
    /// The first heartbeat of the period.
    pub started: Millis,
    /// Its last heartbeat.
    pub ended: Millis,
}

/// When a run refuses to close sessions of users who vanished without a trace.
///
/// A user in the previous online set with no shadow key left is normally closed at the
/// newest heartbeat known durably. But if Redis lost its data (restarted empty), everyone
/// vanishes at once and that would stamp a crowd with stale times. When more than
/// `max_share` of the previous online set vanishes, and at least `min_users` of them, the
/// run records only what it saw exactly and keeps the vanished users for the next run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VanishGuard {
    /// The share of the previous online set (0 to 1) that may vanish in one run.
    pub max_share: f64,
    /// Below this many vanished users the guard never fires.
    pub min_users: u64,
    /// Close the vanished users anyway (an operator's deliberate reconciliation).
    pub accept: bool,
}

impl Default for VanishGuard {
    fn default() -> VanishGuard {
        VanishGuard {
            max_share: 0.5,
            min_users: 100,
            accept: false,
        }
    }
}

/// The writes one run makes, and its counts.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Closed periods to record.
    pub sessions: Vec<ClosedSession>,
    /// Last-seen times to move forward, as (user, time).
    pub last_seen: Vec<(Box<str>, Millis)>,
    /// Rows to put into the online set (new or restarted sessions).
    pub online_upserts: Vec<OnlineRow>,
    /// Users to take out of the online set.
    pub online_removals: Vec<Box<str>>,
    /// Users online in this run.
    pub online: u64,
    /// Users who started a session since the previous run.
    pub came_online: u64,
    /// Users whose session ended since the previous run.
    pub went_offline: u64,
    /// Vanished users kept in the online set by the guard.
    pub vanished_kept: u64,
}

/// Plans the writes for `observed` (sorted by user, one per user) against `previous`
/// (the previous online set, sorted by user). Observations of users who were offline
/// before `settled_before` were recorded by an earlier run and are passed over.
pub fn plan<E>(
    previous: impl Iterator<Item = Result<OnlineRow, E>>,
    observed: &[Observation],
    settled_before: Millis,
    guard: VanishGuard,
) -> Result<Plan, E> {
    let mut plan = Plan::default();
    let mut vanished = Vec::new();
    let mut previous_len = 0u64;
    let mut obs = observed.iter().peekable();
    for prev in previous {
        let prev = prev?;
        previous_len += 1;
        while let Some(o) = obs.next_if(|o| o.user.as_bytes() < prev.user.as_bytes()) {
            plan.observe_new(o, settled_before);
        }
        match obs.next_if(|o| o.user.as_bytes() == prev.user.as_bytes()) {
            Some(o) => plan.observe_known(prev, o),
            None => vanished.push(prev),
        }
    }
    for o in obs {
        plan.observe_new(o, settled_before);
    }
    plan.settle_vanished(vanished, previous_len, guard);
    Ok(plan)
}

impl Plan {
    /// A user not in the previous online set.
    fn observe_new(&mut self, o: &Observation, settled_before: Millis) {
        if o.online {
            self.online += 1;
            self.came_online += 1;
            if let Some(end) = o.shadow.previous_end {
                self.last_seen.push((o.user.as_str().into(), end));
            }
            self.online_upserts.push(row_of(o));
        } else if o.shadow.last >= settled_before {
            // A whole session between two runs, or an offline call.
            self.close(&o.user, o.shadow.start, o.shadow.last);
        }
    }

    /// A user the previous run saw online.
    fn observe_known(&mut self, prev: OnlineRow, o: &Observation) {
        let same_session = o.shadow.start == prev.since;
        if !same_session {
            // The open session ended and another began; the shadow key kept its end.
            let end = o.shadow.previous_end.filter(|e| *e >= prev.since);
            self.close(&prev.user, prev.since, end.unwrap_or(prev.last_heartbeat));
        }
        match (o.online, same_session) {
            (true, true) => self.online += 1,
            (true, false) => {
                self.online += 1;
                self.went_offline += 1;
                self.came_online += 1;
                self.online_upserts.push(row_of(o));
            }
            (false, _) => {
                self.went_offline += 1;
                self.close(&o.user, o.shadow.start, o.shadow.last);
                self.online_removals.push(prev.user);
            }
        }
    }

    /// Users of the previous online set with no shadow key left.
    fn settle_vanished(&mut self, vanished: Vec<OnlineRow>, previous_len: u64, guard: VanishGuard) {
        let count = vanished.len() as u64;
        let too_many =
            count >= guard.min_users && count as f64 > guard.max_share * previous_len as f64;
        if too_many && !guard.accept {
            self.vanished_kept = count;
            return;
        }
        for prev in vanished {
            self.went_offline += 1;
            self.close(&prev.user, prev.since, prev.last_heartbeat);
            self.online_removals.push(prev.user);
        }
    }

    fn close(&mut self, user: &str, started: Millis, ended: Millis) {
        self.sessions.push(ClosedSession {
            user: user.into(),
            started,
            ended,
        });
        self.last_seen.push((user.into(), ended));
    }
}

fn row_of(o: &Observation) -> OnlineRow {
    OnlineRow {
        user: o.user.as_str().into(),
        since: o.shadow.start,
        last_heartbeat: o.shadow.last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::Shadow;

    fn seen(user: &str, start: Millis, last: Millis, online: bool) -> Observation {
        Observation {
            user: user.into(),
            shadow: Shadow {
                last,
                start,
                previous_end: None,
            },
            online,
        }
    }

    fn row(user: &str, since: Millis, last_heartbeat: Millis) -> Result<OnlineRow, ()> {
        Ok(OnlineRow {
            user: user.into(),
            since,
            last_heartbeat,
        })
    }

    fn none() -> std::iter::Empty<Result<OnlineRow, ()>> {
        std::iter::empty()
    }

    fn closed(user: &str, started: Millis, ended: Millis) -> ClosedSession {
        ClosedSession {
            user: user.into(),
            started,
            ended,
        }
    }

    #[test]
    fn new_online_users_join_the_online_set() {
        let observed = [seen("ann", 10, 20, true)];

        let plan = plan(none(), &observed, 0, VanishGuard::default()).unwrap();

        assert_eq!(
            (plan.online, plan.came_online, plan.went_offline),
            (1, 1, 0)
        );
        assert_eq!(plan.online_upserts.len(), 1);
        assert!(plan.sessions.is_empty() && plan.last_seen.is_empty());
    }

    #[test]
    fn users_who_left_are_closed_at_their_last_heartbeat() {
        let previous = vec![row("ann", 10, 10), row("bob", 5, 5)];
        let observed = [seen("ann", 10, 40, false), seen("bob", 5, 50, true)];

        let plan = plan(previous.into_iter(), &observed, 0, VanishGuard::default()).unwrap();

        assert_eq!(
            (plan.online, plan.came_online, plan.went_offline),
            (1, 0, 1)
        );
        assert_eq!(plan.sessions, vec![closed("ann", 10, 40)]);
        assert_eq!(plan.last_seen, vec![("ann".into(), 40)]);
        assert_eq!(plan.online_removals, vec![Box::<str>::from("ann")]);
    }

    #[test]
    fn offline_users_older_than_the_watermark_are_passed_over() {
        let observed = [seen("old", 1, 2, false), seen("new", 30, 40, false)];

        let plan = plan(
            std::iter::empty::<Result<_, ()>>(),
            &observed,
            30,
            VanishGuard::default(),
        );

        assert_eq!(plan.unwrap().sessions, vec![closed("new", 30, 40)]);
    }

    #[test]
    fn vanished_users_are_kept_when_too_many_vanish_at_once() {
        let previous: Vec<_> = (0..4).map(|i| row(&format!("u{i}"), 1, 2)).collect();
        let observed = [seen("u0", 1, 3, true)];
        let guard = VanishGuard {
            max_share: 0.5,
            min_users: 2,
            accept: false,
        };

        let kept = plan(previous.clone().into_iter(), &observed, 0, guard).unwrap();
        let accepted = VanishGuard {
            accept: true,
            ..guard
        };
        let closed_all = plan(previous.into_iter(), &observed, 0, accepted).unwrap();

        assert_eq!((kept.vanished_kept, kept.went_offline), (3, 0));
        assert!(kept.sessions.is_empty());
        assert_eq!((closed_all.vanished_kept, closed_all.went_offline), (0, 3));
        assert_eq!(closed_all.sessions[0], closed("u1", 1, 2));
    }

    #[test]
    fn a_few_vanished_users_are_closed_at_their_newest_durable_heartbeat() {
        let previous = vec![row("ann", 1, 7), row("bob", 1, 2), row("cat", 1, 2)];
        let observed = [seen("bob", 1, 3, true), seen("cat", 1, 3, true)];

        let plan = plan(previous.into_iter(), &observed, 0, VanishGuard::default()).unwrap();

        assert_eq!(plan.sessions, vec![closed("ann", 1, 7)]);
        assert_eq!(plan.went_offline, 1);
    }
}
