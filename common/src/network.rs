//! The neuron interaction network of one sample (SNIN): layers of drawn neurons and the
//! weighted edges between them (docs/method.md §1).

use serde::Serialize;

use crate::error::Error;
use crate::layout::{BlockTensor, ModelShape};
use crate::sampler::SninDraw;

/// Anything that can hand out the weights at drawn rows and columns: a mapped
/// checkpoint, or rows assembled from ranged downloads.
pub trait WeightReader: Sync {
    fn shape(&self) -> &ModelShape;
    /// `W[rows[i], cols[j]]`, row-major, as f64.
    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error>;
}

impl WeightReader for crate::checkpoint::Checkpoint {
    fn shape(&self) -> &ModelShape {
        crate::checkpoint::Checkpoint::shape(self)
    }

    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        crate::checkpoint::Checkpoint::gather(self, block, tensor, rows, cols)
    }
}

/// One weight read a sample needs: `W[rows[i], cols[j]]` of a block's tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    pub block: usize,
    pub tensor: BlockTensor,
    pub rows: Vec<usize>,
    pub cols: Vec<usize>,
    /// Layers (indices into `Snin::layers`) the edges run from and to.
    from: usize,
    to: usize,
}

/// The layers of a sample, in network order: per block `A`, `QKV`, `ATT`, `D`, `M`, then
/// `out`, so block `b`'s layers are `5b … 5b+4` and `out` is `5·blocks`.
pub(crate) fn layers_of(draw: &SninDraw, hidden: usize) -> Vec<Layer> {
    let mut layers = Vec::with_capacity(5 * draw.blocks.len() + 1);
    for (b, block) in draw.blocks.iter().enumerate() {
        for (suffix, neurons) in [
            ("A", block.input.clone()),
            ("QKV", block.qkv_rows(hidden)),
            ("ATT", block.heads.clone()),
            ("D", block.dense.clone()),
            ("M", block.mlp.clone()),
        ] {
            layers.push(Layer {
                name: format!("b{b}.{suffix}"),
                neurons,
            });
        }
    }
    layers.push(Layer {
        name: "out".to_string(),
        neurons: draw.output.clone(),
    });
    layers
}

/// The layers (indices into `Snin::layers`) whose edges a block's tensor carries.
pub(crate) fn layers_joined(block: usize, tensor: BlockTensor) -> (usize, usize) {
    let from = 5 * block
        + match tensor {
            BlockTensor::Qkv => 0,
            BlockTensor::AttentionDense => 2,
            BlockTensor::MlpUp => 3,
            BlockTensor::MlpDown => 4,
        };
    (from, from + 1)
}

impl Gather {
    /// A read of `W[rows[i], cols[j]]` of block `block`'s `tensor`.
    pub fn new(block: usize, tensor: BlockTensor, rows: Vec<usize>, cols: Vec<usize>) -> Self {
        let (from, to) = layers_joined(block, tensor);
        Gather {
            block,
            tensor,
            rows,
            cols,
            from,
            to,
        }
    }
}

/// Every weight read a sample makes, in the order `Snin::build` makes them. Fetchers use
/// it to download only these elements.
pub fn gathers(draw: &SninDraw, hidden: usize) -> Vec<Gather> {
    let layers = layers_of(draw, hidden);
    let mut reads = Vec::with_capacity(4 * draw.blocks.len());
    for b in 0..draw.blocks.len() {
        for tensor in BlockTensor::ALL {
            let (from, to) = layers_joined(b, tensor);
            reads.push(Gather::new(
                b,
                tensor,
                layers[to].neurons.clone(),
                layers[from].neurons.clone(),
            ));
        }
    }
    reads
}

/// One layer of drawn neurons.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// `b{block}.A`, `b{block}.QKV`, `b{block}.ATT`, `b{block}.D`, `b{block}.M`, or `out`.
    pub name: String,
    /// Neuron indices in the tensor dimension the layer lives in.
    pub neurons: Vec<usize>,
}

/// A node: its layer and its position within that layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef {
    pub layer: usize,
    pub position: usize,
}

/// One sampled network: layers in order, and per node its out-edges.
#[derive(Debug, Clone)]
pub struct Snin {
    pub layers: Vec<Layer>,
    /// First global node id of each layer.
    layer_offsets: Vec<usize>,
    /// Per global node id: `(target node id, weight)`, zero weights left out.
    out_edges: Vec<Vec<(usize, f64)>>,
}

impl Snin {
    /// Builds seed `draw`'s network from the weights of one checkpoint.
    pub fn build(reader: &dyn WeightReader, draw: &SninDraw) -> Result<Self, Error> {
        let hidden = reader.shape().hidden_size;
        let s = draw.layer_sample;
        let layers = layers_of(draw, hidden);
        let mut layer_offsets = Vec::with_capacity(layers.len());
        let mut total = 0;
        for layer in &layers {
            layer_offsets.push(total);
            total += layer.neurons.len();
        }
        let mut snin = Snin {
            layers,
            layer_offsets,
            out_edges: vec![Vec::new(); total],
        };
        for read in gathers(draw, hidden) {
            let weights = reader.gather(read.block, read.tensor, &read.rows, &read.cols)?;
            snin.connect(&read, &weights);
            if read.tensor == BlockTensor::Qkv {
                snin.connect_attention(read.to, read.to + 1, s);
            }
        }
        Ok(snin)
    }

    /// Attention: Q node `j` reaches only output `j`; every K and V node reaches all.
    fn connect_attention(&mut self, qkv: usize, att: usize, s: usize) {
        for position in 0..3 * s {
            let source = self.layer_offsets[qkv] + position;
            self.out_edges[source] = if position < s {
                vec![(self.layer_offsets[att] + position, 1.0)]
            } else {
                (0..s).map(|t| (self.layer_offsets[att] + t, 1.0)).collect()
            };
        }
    }

    /// Edges from every node of the read's source layer to every node of its target
    /// layer, weighted by `W[target neuron, source neuron]`; zero weights make no edge.
    fn connect(&mut self, read: &Gather, weights: &[f64]) {
        let (n_rows, n_cols) = (read.rows.len(), read.cols.len());
        let (from_offset, to_offset) = (self.layer_offsets[read.from], self.layer_offsets[read.to]);
        for col in 0..n_cols {
            let edges = &mut self.out_edges[from_offset + col];
            edges.clear();
            edges.extend(
                (0..n_rows)
                    .map(|row| (to_offset + row, weights[row * n_cols + col]))
                    .filter(|&(_, w)| w != 0.0),
            );
        }
    }

    pub fn node_count(&self) -> usize {
        self.out_edges.len()
    }

    /// Every edge, the weight-1 attention edges included.
    pub fn edge_count(&self) -> usize {
        self.out_edges.iter().map(Vec::len).sum()
    }

    /// Nodes with at least one out-edge.
    pub fn source_node_count(&self) -> usize {
        self.out_edges.iter().filter(|e| !e.is_empty()).count()
    }

    pub fn node(&self, id: usize) -> NodeRef {
        let layer = self.layer_offsets.partition_point(|&start| start <= id) - 1;
        NodeRef {
            layer,
            position: id - self.layer_offsets[layer],
        }
    }

    /// `(source, target, weight)` for every edge, grouped by source node.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        self.out_edges
            .iter()
            .enumerate()
            .flat_map(|(source, edges)| edges.iter().map(move |&(t, w)| (source, t, w)))
    }

    /// Per source node (in node order), its out-distances `ω = 1/|w|`.
    pub fn source_distances(&self) -> Vec<Vec<f64>> {
        self.out_edges
            .iter()
            .filter(|e| !e.is_empty())
            .map(|edges| edges.iter().map(|&(_, w)| 1.0 / w.abs()).collect())
            .collect()
    }
}
