/**
 * Vision models (issue #14): the attention modules of Guo et al.'s survey (arXiv 2111.07624) on seqlab's
 * `conv2d`: {@link Conv2d}; channel attention {@link SE} and {@link ECA}; spatial attention
 * {@link NonLocal}; channel and spatial {@link CBAM} and {@link BAM}; ViT's {@link ViTAttention} and
 * {@link attentionRollout}; and the image data ({@link loadImageDataset}: MNIST, Fashion-MNIST) with a
 * seeded batch iterator and augmentation. Each module returns its output from `forward` and what it attends
 * to from `forwardWithAttention`, and counts its FLOPs for an input shape (`flops(shape)`).
 *
 * @example
 * ```ts
 * import { randn, SE } from "seqlab";
 * const se = new SE(64, { seed: 1 });
 * console.log(se.forward(randn([1, 64, 7, 7])).shape); // [1, 64, 7, 7]
 * se.dispose();
 * ```
 * @module
 */

export { VisionError } from "./common.ts";
export * from "./conv.ts";
export * from "./channel.ts";
export * from "./nonlocal.ts";
export * from "./cbam.ts";
export * from "./vit.ts";
export * from "./data.ts";
export * from "./resnet.ts";
export * from "./vit_model.ts";
export * from "./vim.ts";
export * from "./vmamba.ts";
