//! Activation recomputation: train a stack of layers while keeping only each layer's input.
//!
//! Candle's autograd keeps every intermediate tensor of the forward pass alive until `backward`, so a decoder's
//! activation memory grows with its depth: at the paper's lengths, tens of layers of MLP and attention
//! intermediates are what does not fit. A [`RecomputeTape`] runs each layer (a *segment*) on a detached copy of
//! its input and keeps the input and the detached output, nothing else; the layer's intermediates are freed as
//! soon as it returns. [`RecomputeTape::backward`] then walks the segments from the last to the first: it runs
//! the segment again from its saved input, back-propagates the gradient that reached its output through that
//! fresh graph (as the gradient of `sum(output * grad)`, whose gradient with respect to `output` is exactly
//! `grad`), and hands the gradient of the input to the segment before. Only one layer's intermediates exist at a
//! time, and every parameter gets the gradient the plain graph would have given it.
//!
//! Segments are closures, so anything that maps a tensor to a tensor can be one: a decoder layer, a vision block.
//! A closure must compute the same function when run again; a layer with random dropout restores its generators
//! first (see the decoder). A segment's input that carries a graph of its own (the embeddings, a trained vision
//! tower's output spliced into them) is remembered, and the gradient of the input is passed on into that graph
//! once the segment is done, so segments can follow one another across models.
//!
//! A segment that treats each token on its own (a decoder layer's MLP half) can also run in slices of rows
//! ([`RecomputeTape::run_rows`]): both passes then hold one slice's intermediates at a time, which bounds the
//! largest part of a layer's working set by the slice instead of the micro-batch (17 x 3200 tokens of an MLP
//! 11008 wide, with LoRA, are tens of GB at once).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var, D};

/// A segment's computation, run once in the forward pass and once more in the backward pass, on its input or
/// on a slice of its rows; the second argument is the slice's first row (0 for a whole input).
type SegmentFn<'a> = Box<dyn Fn(&Tensor, usize) -> Result<Tensor> + 'a>;

struct Segment<'a> {
    /// What the segment starts from: the previous segment's output, or a detached copy of a tracked tensor.
    input: Var,
    /// The tracked tensor `input` was copied from, whose graph the input's gradient continues into.
    source: Option<Tensor>,
    /// The segment's detached output, a variable so that backward passes report its gradient.
    output: Var,
    run: SegmentFn<'a>,
    /// Rows per slice for a segment run in slices (see [`RecomputeTape::run_rows`]).
    rows: Option<usize>,
}

/// The row slices of `input` for a segment of `rows` rows per slice, `(first row, slice)`, each slice a `(1,
/// rows, features)` view: the whole input for a segment that is not sliced.
fn slices(rows: Option<usize>, input: &Tensor) -> Result<Vec<(usize, Tensor)>> {
    let Some(rows) = rows else {
        return Ok(vec![(0, input.clone())]);
    };
    let features = input.dim(D::Minus1)?;
    let total = input.elem_count() / features.max(1);
    let flat = input.reshape((1, total, features))?;
    (0..total)
        .step_by(rows.max(1))
        .map(|first| Ok((first, flat.narrow(1, first, rows.min(total - first))?)))
        .collect()
}

/// Puts the outputs of [`slices`], `(1, rows, out)` each, back in the input's shape (its last dimension `out`).
fn joined(rows: Option<usize>, input: &Tensor, outputs: Vec<Tensor>) -> Result<Tensor> {
    if rows.is_none() {
        return outputs
            .into_iter()
            .next()
            .ok_or_else(|| candle_core::Error::Msg("a segment without output".into()));
    }
    let out = Tensor::cat(&outputs, 1)?;
    let mut dims = input.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out.dim(D::Minus1)?;
    }
    out.reshape(dims)
}

/// The segments of one forward pass, in the order they ran.
#[derive(Default)]
pub struct RecomputeTape<'a> {
    segments: RefCell<Vec<Segment<'a>>>,
}

impl<'a> RecomputeTape<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `run` on `xs` as a new segment and returns its output, which carries no graph but a variable's
    /// identity: later computation may use it as it would any tensor, and [`Self::backward`] follows its gradient
    /// back through `run`.
    pub fn run(&self, xs: &Tensor, run: impl Fn(&Tensor) -> Result<Tensor> + 'a) -> Result<Tensor> {
        self.push(xs, Box::new(move |xs, _| run(xs)), None)
    }

    /// [`Self::run`] for a segment that computes each row (each position of the last dimension's vectors) on its
    /// own: it runs on slices of at most `rows` rows, `run(slice, first row)` with the slice `(1, rows,
    /// features)`, in both passes, so that only one slice's intermediates exist at a time. `run` must give each
    /// row what a whole-input run would (a layer with dropout moves its generators to the slice's first row).
    pub fn run_rows(
        &self,
        xs: &Tensor,
        rows: usize,
        run: impl Fn(&Tensor, usize) -> Result<Tensor> + 'a,
    ) -> Result<Tensor> {
        self.push(xs, Box::new(run), Some(rows.max(1)))
    }

    fn push(&self, xs: &Tensor, run: SegmentFn<'a>, rows: Option<usize>) -> Result<Tensor> {
        let (input, source) = if xs.is_variable() {
            (Var::from_tensor(xs)?, None)
        } else {
            let source = xs.track_op().then(|| xs.clone());
            (Var::from_tensor(&xs.detach())?, source)
        };
        let outputs = slices(rows, input.as_tensor())?
            .into_iter()
            .map(|(first, slice)| Ok(run(&slice, first)?.detach()))
            .collect::<Result<Vec<_>>>()?;
        let output = Var::from_tensor(&joined(rows, input.as_tensor(), outputs)?)?;
        let out = output.as_tensor().clone();
        self.segments.borrow_mut().push(Segment {
            input,
            source,
            output,
            run,
            rows,
        });
        Ok(out)
    }

    /// How many segments ran.
    pub fn len(&self) -> usize {
        self.segments.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gradients of `loss` with respect to every variable it depends on, through the segments, as
    /// `loss.backward()` would give them without the tape. The segments' own inputs and outputs are not in it.
    pub fn backward(self, loss: &Tensor) -> Result<GradStore> {
        let segments = self.segments.into_inner();
        let mut sums = Sums::new(&segments);
        sums.add(variable_gradients(loss)?)?;
        for segment in segments.iter().rev() {
            let Some(grad) = sums.take(&segment.output) else {
                continue;
            };
            sums.add(recomputed_gradients(segment, &grad)?)?;
            if let Some(source) = &segment.source {
                if let Some(grad) = sums.take(&segment.input) {
                    sums.add(variable_gradients(&pulled_back(source, &grad)?)?)?;
                }
            }
        }
        Ok(sums.into_grad_store())
    }
}

/// The gradients of one segment run again from its input, `grad` reaching its output: of the parameters it
/// uses, and of its input. A sliced segment runs slice by slice, each slice's input a variable of its own whose
/// gradients are put back together as the input's.
fn recomputed_gradients(segment: &Segment, grad: &Tensor) -> Result<Vec<(TensorId, Tensor)>> {
    let input = segment.input.as_tensor();
    if segment.rows.is_none() {
        let recomputed = (segment.run)(input, 0)?;
        return variable_gradients(&pulled_back(&recomputed, grad)?);
    }
    let rows = segment.rows;
    let grads = slices(rows, &grad.contiguous()?)?;
    let mut params = Vec::new();
    let mut input_grads = Vec::with_capacity(grads.len());
    for ((first, slice), (_, grad)) in slices(rows, &input.detach())?.into_iter().zip(grads) {
        let slice = Var::from_tensor(&slice.contiguous()?)?;
        let recomputed = (segment.run)(slice.as_tensor(), first)?;
        let mut slice_grad = None;
        for (id, g) in variable_gradients(&pulled_back(&recomputed, &grad)?)? {
            if id == slice.as_tensor().id() {
                slice_grad = Some(g);
            } else {
                params.push((id, g));
            }
        }
        input_grads.push(match slice_grad {
            Some(g) => g,
            None => slice.as_tensor().zeros_like()?,
        });
    }
    params.push((input.id(), joined(rows, input, input_grads)?));
    Ok(params)
}

/// `sum(tensor * grad)`: a scalar whose gradient with respect to `tensor` is `grad`, so that its backward pass
/// continues the gradient `grad` of some loss into `tensor`'s inputs.
fn pulled_back(tensor: &Tensor, grad: &Tensor) -> Result<Tensor> {
    (tensor * grad)?.sum_all()
}

/// The gradients of `root` with respect to the variables of its graph, detached.
///
/// Candle's `backward` also returns gradients for the untracked operands it met (constants, masks) and leaves
/// the variables' gradients attached to the graph that computed them, which holds the activations of that
/// graph alive. Kept across segments, either would grow with the depth: only detached variables' gradients are
/// kept.
fn variable_gradients(root: &Tensor) -> Result<Vec<(TensorId, Tensor)>> {
    let variables: Vec<TensorId> = root
        .sorted_nodes()
        .into_iter()
        .filter(|node| node.is_variable())
        .map(Tensor::id)
        .collect();
    let grads = root.backward()?;
    Ok(variables
        .into_iter()
        .filter_map(|id| grads.get_id(id).map(|grad| (id, grad.detach())))
        .collect())
}

/// Gradients gathered so far: of the parameters, and of segment inputs and outputs still to be passed on.
struct Sums {
    params: HashMap<TensorId, Tensor>,
    /// The ids of the tape's own variables, to tell them apart from parameters.
    tape_vars: HashSet<TensorId>,
    pending: HashMap<TensorId, Tensor>,
}

impl Sums {
    fn new(segments: &[Segment]) -> Self {
        let tape_vars = segments
            .iter()
            .flat_map(|s| [&s.input, &s.output])
            .map(|var| var.as_tensor().id())
            .collect();
        Self {
            params: HashMap::new(),
            tape_vars,
            pending: HashMap::new(),
        }
    }

    /// Adds one backward pass's gradients: a tape variable's to what it will pass on, the rest to the parameters'.
    fn add(&mut self, grads: Vec<(TensorId, Tensor)>) -> Result<()> {
        for (id, grad) in grads {
            let sums = if self.tape_vars.contains(&id) {
                &mut self.pending
            } else {
                &mut self.params
            };
            let sum = match sums.remove(&id) {
                Some(previous) => (previous + grad)?,
                None => grad,
            };
            sums.insert(id, sum);
        }
        Ok(())
    }

    /// The whole gradient of a tape variable, once nothing more can reach it.
    fn take(&mut self, var: &Var) -> Option<Tensor> {
        self.pending.remove(&var.as_tensor().id())
    }

    fn into_grad_store(self) -> GradStore {
        let mut store = GradStore::default();
        for (id, grad) in self.params {
            store.insert_id(id, grad);
        }
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A chain of three segments whose weights are used twice (a tied weight), fed by a tracked input: the tape
    /// gives every variable the plain graph's gradient.
    #[test]
    fn the_tape_gives_the_plain_graphs_gradients() {
        let device = Device::Cpu;
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 16.0, &device)
                .unwrap()
                .affine(0.05, -0.3)
                .unwrap()
                .reshape((4, 4))
                .unwrap(),
        )
        .unwrap();
        let embed =
            Var::from_tensor(&Tensor::ones((3, 4), candle_core::DType::F32, &device).unwrap())
                .unwrap();
        let layer = |x: &Tensor| -> Result<Tensor> { x.matmul(w.as_tensor())?.tanh()? + x };
        let loss = |x: &Tensor| -> Result<Tensor> {
            x.matmul(w.as_tensor())?.sqr()?.sum(D::Minus1)?.sum_all()
        };
        let input = (embed.as_tensor() * 0.5).unwrap();

        let mut plain = input.clone();
        for _ in 0..3 {
            plain = layer(&plain).unwrap();
        }
        let plain_loss = loss(&plain).unwrap();
        let plain_grads = plain_loss.backward().unwrap();

        let tape = RecomputeTape::new();
        let mut xs = input.clone();
        for _ in 0..3 {
            xs = tape.run(&xs, layer).unwrap();
        }
        assert_eq!(tape.len(), 3);
        let taped_loss = loss(&xs).unwrap();
        assert!(close(&plain_loss, &taped_loss) == 0.0);
        let taped_grads = tape.backward(&taped_loss).unwrap();
        for var in [&w, &embed] {
            let a = plain_grads.get(var.as_tensor()).unwrap();
            let b = taped_grads.get(var.as_tensor()).unwrap();
            assert!(close(a, b) < 1e-5, "{a} vs {b}");
        }
        assert_eq!(taped_grads.get_ids().count(), 2);
    }

    /// A row-wise segment run in slices of 2 of 5 rows (3 slices, the last short), between whole segments: the
    /// same output and the plain graph's gradients, the slices' first rows in order in both passes.
    #[test]
    fn a_segment_run_in_row_slices_gives_the_plain_graphs_gradients() {
        let device = Device::Cpu;
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 12.0, &device)
                .unwrap()
                .affine(0.1, -0.5)
                .unwrap()
                .reshape((4, 3))
                .unwrap(),
        )
        .unwrap();
        let embed = Var::from_tensor(
            &Tensor::arange(0f32, 20.0, &device)
                .unwrap()
                .affine(0.05, -0.4)
                .unwrap()
                .reshape((1, 5, 4))
                .unwrap(),
        )
        .unwrap();
        let rowwise = |x: &Tensor| -> Result<Tensor> {
            let h = x.broadcast_matmul(w.as_tensor())?.tanh()?;
            h.broadcast_matmul(&w.as_tensor().t()?)? + x
        };
        let mix = |x: &Tensor| -> Result<Tensor> {
            (x.sum_keepdim(1)?.broadcast_as(x.shape())? * 0.1)? + x
        };
        let loss =
            |x: &Tensor| -> Result<Tensor> { x.broadcast_matmul(w.as_tensor())?.sqr()?.sum_all() };

        let input = (embed.as_tensor() * 0.5).unwrap();
        let plain = rowwise(&mix(&input).unwrap()).unwrap();
        let plain = mix(&plain).unwrap();
        let plain_loss = loss(&plain).unwrap();
        let plain_grads = plain_loss.backward().unwrap();

        let firsts = RefCell::new(Vec::new());
        let tape = RecomputeTape::new();
        let xs = tape.run(&input, mix).unwrap();
        let xs = tape
            .run_rows(&xs, 2, |x, first| {
                assert_eq!(x.dims()[..2], [1, 2.min(5 - first)]);
                firsts.borrow_mut().push(first);
                rowwise(x)
            })
            .unwrap();
        let xs = tape.run(&xs, mix).unwrap();
        assert_eq!(xs.dims(), [1, 5, 4]);
        let taped_loss = loss(&xs).unwrap();
        assert!(close(&plain_loss, &taped_loss) < 1e-6);
        let taped_grads = tape.backward(&taped_loss).unwrap();
        assert_eq!(firsts.into_inner(), [0, 2, 4, 0, 2, 4]);
        for var in [&w, &embed] {
            let a = plain_grads.get(var.as_tensor()).unwrap();
            let b = taped_grads.get(var.as_tensor()).unwrap();
            assert!(close(a, b) < 1e-5, "{a} vs {b}");
        }
        assert_eq!(taped_grads.get_ids().count(), 2);
    }
}
