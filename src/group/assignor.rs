//! Assigns partitions to group members: balanced (member counts differ by at
//! most one where their patterns allow) and sticky (a member keeps what it
//! had where it can, so a rebalance moves as few partitions as possible).

use std::collections::{BTreeMap, BTreeSet};

use super::TopicPartition;

/// `eligible(member, tp)` says whether a member's pattern covers a partition.
pub fn assign(
    members: &[String],
    partitions: &[TopicPartition],
    previous: &BTreeMap<String, Vec<TopicPartition>>,
    eligible: impl Fn(&str, &TopicPartition) -> bool,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut result: BTreeMap<String, Vec<TopicPartition>> = members.iter().map(|m| (m.clone(), Vec::new())).collect();
    if members.is_empty() {
        return result;
    }
    let cap = partitions.len().div_ceil(members.len());
    let existing: BTreeSet<&TopicPartition> = partitions.iter().collect();
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    // Sticky pass: keep previous partitions up to the balanced cap.
    for m in members {
        for tp in previous.get(m).into_iter().flatten() {
            let mine = result.get_mut(m).expect("member present");
            if mine.len() < cap && existing.contains(tp) && !taken.contains(tp) && eligible(m, tp) {
                mine.push(tp.clone());
                taken.insert(tp.clone());
            }
        }
    }
    // The rest go to the eligible member holding the fewest.
    for tp in partitions {
        if taken.contains(tp) {
            continue;
        }
        let target = members.iter().filter(|m| eligible(m, tp)).min_by_key(|m| (result[*m].len(), (*m).clone()));
        if let Some(m) = target {
            result.get_mut(m).expect("member present").push(tp.clone());
            taken.insert(tp.clone());
        }
    }
    // Even out what patterns allowed to pile up (bounded: each move
    // narrows the gap).
    for _ in 0..partitions.len() {
        let most = members.iter().max_by_key(|m| (result[*m].len(), (*m).clone())).expect("non-empty").clone();
        let least = members.iter().min_by_key(|m| (result[*m].len(), (*m).clone())).expect("non-empty").clone();
        if result[&most].len() <= result[&least].len() + 1 {
            break;
        }
        let movable = result[&most].iter().rposition(|tp| eligible(&least, tp));
        let Some(i) = movable else { break };
        let tp = result.get_mut(&most).expect("member present").remove(i);
        result.get_mut(&least).expect("member present").push(tp);
    }
    for v in result.values_mut() {
        v.sort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(n: u32) -> Vec<TopicPartition> {
        (0..n).map(|p| ("t".to_string(), p)).collect()
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_disjointly_completely_and_evenly() {
        let a = assign(&members(&["a", "b"]), &tps(4), &BTreeMap::new(), |_, _| true);
        assert_eq!(a["a"].len(), 2);
        assert_eq!(a["b"].len(), 2);
        let all: BTreeSet<_> = a.values().flatten().cloned().collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn a_joining_member_moves_as_little_as_possible() {
        let before = assign(&members(&["a", "b"]), &tps(6), &BTreeMap::new(), |_, _| true);
        let after = assign(&members(&["a", "b", "c"]), &tps(6), &before, |_, _| true);
        let kept = |m: &str| after[m].iter().filter(|tp| before[m].contains(tp)).count();
        assert_eq!(kept("a") + kept("b"), 4, "only two partitions move, both to c");
        assert_eq!(after["c"].len(), 2);
    }

    #[test]
    fn patterns_limit_who_gets_what() {
        let parts = vec![("x".to_string(), 0), ("y".to_string(), 0), ("y".to_string(), 1)];
        let a = assign(&members(&["a", "b"]), &parts, &BTreeMap::new(), |m, tp| m == "b" || tp.0 == "x");
        assert_eq!(a["a"], vec![("x".to_string(), 0)]);
        assert_eq!(a["b"].len(), 2);
    }
}
