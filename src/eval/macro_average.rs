//! Macro averages: the mean of group means, so that a small task counts as much as a large one.

use std::collections::BTreeMap;

use super::metrics::mean_of;
use super::EvalError;

/// Group means and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct MacroAverage {
    /// group -> mean of the per-query values of its queries.
    pub per_group: BTreeMap<String, f64>,
    /// Mean of the group means.
    pub overall: f64,
}

/// Macro-averages per-query `values` (one metric of an [`Evaluation`](super::Evaluation)) over the groups that
/// `group_of` (query id -> group, e.g. the M-BEIR task) assigns.
///
/// `group_of` may hold more queries than `values` (say, queries without a relevant document); those are not
/// averaged, and a group left without queries is not reported. A query in `values` without a group is an error
/// rather than silently dropped, since dropping it would change the average.
pub fn macro_average(
    values: &BTreeMap<String, f64>,
    group_of: &BTreeMap<String, String>,
) -> Result<MacroAverage, EvalError> {
    let mut members: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (query_id, &value) in values {
        let group = group_of
            .get(query_id)
            .ok_or_else(|| EvalError::MissingGroup(query_id.clone()))?;
        members.entry(group).or_default().push(value);
    }
    let per_group = members
        .into_iter()
        .map(|(group, values)| Ok((group.to_owned(), mean_of(values.into_iter())?)))
        .collect::<Result<BTreeMap<_, _>, EvalError>>()?;
    let overall = mean_of(per_group.values().copied())?;
    Ok(MacroAverage { per_group, overall })
}
