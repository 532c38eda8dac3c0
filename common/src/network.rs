//! The neuron interaction network of one sample (SNIN): layers of drawn neurons and the
//! weighted edges between them (SPEC §1).

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
        let shape = *reader.shape();
        let d = shape.hidden_size;
        let s = draw.layer_sample;
        let mut layers = Vec::with_capacity(5 * draw.blocks.len() + 1);
        for (b, block) in draw.blocks.iter().enumerate() {
            layers.push(Layer {
                name: format!("b{b}.A"),
                neurons: block.input.clone(),
            });
            layers.push(Layer {
                name: format!("b{b}.QKV"),
                neurons: block.qkv_rows(d),
            });
            layers.push(Layer {
                name: format!("b{b}.ATT"),
                neurons: block.heads.clone(),
            });
            layers.push(Layer {
                name: format!("b{b}.D"),
                neurons: block.dense.clone(),
            });
            layers.push(Layer {
                name: format!("b{b}.M"),
                neurons: block.mlp.clone(),
            });
        }
        layers.push(Layer {
            name: "out".to_string(),
            neurons: draw.output.clone(),
        });
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

        for b in 0..draw.blocks.len() {
            let [a, qkv, att, dense, mlp, next] = [0, 1, 2, 3, 4, 5].map(|i| 5 * b + i);
            snin.connect_by_weights(reader, b, BlockTensor::Qkv, a, qkv)?;
            // Attention: Q node j reaches only output j; every K and V node reaches all.
            for position in 0..3 * s {
                let source = snin.layer_offsets[qkv] + position;
                let targets: Vec<(usize, f64)> = if position < s {
                    vec![(snin.layer_offsets[att] + position, 1.0)]
                } else {
                    (0..s).map(|t| (snin.layer_offsets[att] + t, 1.0)).collect()
                };
                snin.out_edges[source] = targets;
            }
            snin.connect_by_weights(reader, b, BlockTensor::AttentionDense, att, dense)?;
            snin.connect_by_weights(reader, b, BlockTensor::MlpUp, dense, mlp)?;
            snin.connect_by_weights(reader, b, BlockTensor::MlpDown, mlp, next)?;
        }
        Ok(snin)
    }

    /// Edges from every node of layer `from` to every node of layer `to`, weighted by
    /// `W[to neuron, from neuron]`.
    fn connect_by_weights(
        &mut self,
        reader: &dyn WeightReader,
        block: usize,
        tensor: BlockTensor,
        from: usize,
        to: usize,
    ) -> Result<(), Error> {
        let rows = &self.layers[to].neurons;
        let cols = &self.layers[from].neurons;
        let weights = reader.gather(block, tensor, rows, cols)?;
        let (n_rows, n_cols) = (rows.len(), cols.len());
        let (from_offset, to_offset) = (self.layer_offsets[from], self.layer_offsets[to]);
        for col in 0..n_cols {
            let edges = &mut self.out_edges[from_offset + col];
            edges.clear();
            edges.extend(
                (0..n_rows)
                    .map(|row| (to_offset + row, weights[row * n_cols + col]))
                    .filter(|&(_, w)| w != 0.0),
            );
        }
        Ok(())
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
