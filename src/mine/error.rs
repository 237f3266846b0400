/// Why mining could not run on its inputs. Every variant names the matrix, query or field at fault, so that a
/// stage can report it against the dataset row it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MineError {
    #[error("{what}: vector dimension must be at least 1")]
    ZeroDimension { what: &'static str },
    #[error("{what}: {len} values do not split into rows of dimension {dim}")]
    Ragged {
        what: &'static str,
        len: usize,
        dim: usize,
    },
    #[error("dimension mismatch: queries have {queries}, documents have {documents}")]
    DimensionMismatch { queries: usize, documents: usize },
    #[error("{what}: row {row}, column {column} is not finite ({value})")]
    NonFinite {
        what: &'static str,
        row: usize,
        column: usize,
        value: f32,
    },
    #[error(
        "vectors too large: |query| <= {query_max_abs}, |document| <= {document_max_abs} over {dim} dimensions \
         could overflow an f32 inner product"
    )]
    ScoreOverflow {
        query_max_abs: f32,
        document_max_abs: f32,
        dim: usize,
    },
    #[error("{count} documents exceed the u32 document index space")]
    TooManyDocuments { count: usize },
    #[error("duplicate document id {id:?} at indices {first} and {second}")]
    DuplicateDocId {
        id: String,
        first: usize,
        second: usize,
    },
    #[error(
        "corpus part covers documents {first_doc}..{end}, but the tie order knows only {known}"
    )]
    PartOutOfRange {
        first_doc: usize,
        end: usize,
        known: usize,
    },
    #[error("{context}: document index {doc} is out of range (corpus has {known} documents)")]
    DocOutOfRange {
        context: String,
        doc: u32,
        known: usize,
    },
    #[error("document {doc} is not in the corpus part {first_doc}..{end}")]
    NotInPart {
        doc: u32,
        first_doc: usize,
        end: usize,
    },
    #[error("part {part} has top-k lists for {lists} queries, the first part for {queries}")]
    PartQueryCount {
        part: usize,
        lists: usize,
        queries: usize,
    },
    #[error("query {query}: document {doc} appears in more than one corpus part")]
    OverlappingParts { query: usize, doc: u32 },
    #[error("{lists} exclusion lists given for {queries} queries")]
    ExclusionCount { lists: usize, queries: usize },
    #[error("invalid top-k config: {field} must be at least 1")]
    ZeroConfig { field: &'static str },
    #[error("invalid filter config: {field} = {value} ({reason})")]
    FilterConfig {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid sampling config: {reason}")]
    SampleConfig { reason: &'static str },
    #[error("query {query}: candidate list is not in rank order at position {position}")]
    UnrankedCandidates { query: String, position: usize },
    #[error("query {query}: score of {what} is not finite ({value})")]
    NonFiniteScore {
        query: String,
        what: &'static str,
        value: f32,
    },
    #[error("top-k search on {device} failed: {reason}")]
    Device { device: String, reason: String },
}
