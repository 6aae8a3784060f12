/** The dataset layer of training mode: discovery, decoding, and the generated real-data datasets. */
export { DatasetError, type DatasetErrorCode } from './errors.js';
export { loadDataset, listClasses, requireSplit, IMAGE_EXTENSIONS, DEPTH_EXTENSIONS, type Dataset, type Sample, type Label, type LayoutKind, type LoadDatasetOptions } from './layout.js';
export { decodeRgb, decodeMask, decodeDepth, probeImage, probeDepth, DEFAULT_RESIZE_KERNEL, DEFAULT_DEPTH_UNIT_METRES, type Size, type ResizeKernel, type MaskResample, type DepthMap, type DecodeDepthOptions } from './decode.js';
export { encodeTiff, readTiffInfo, type TiffImage, type TiffInfo } from './tiff.js';
export {
  FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FASHION_MNIST_LABELS, FASHION_MNIST_DEFAULTS,
  loadFashionMnist, readIdx, parseIdx, indicesOfClass, classIndex, writeOneClassDataset,
  type FashionMnistSplit, type FashionMnistClass, type OneClassOptions, type OneClassSummary, type IdxArray,
} from './fashion-mnist.js';
export {
  SKIMAGE_DATA_DIR, TEXTURES, DEFECT_TYPES, TEXTURE_DEFAULTS,
  loadTexture, textureRegions, makePart, makeTrainCrop, writeTextureDataset,
  type TextureName, type DefectType, type Texture, type Region, type Part, type DefectInfo, type Augment, type MakePartOptions,
  type TextureDatasetOptions, type TextureDatasetSummary,
} from './synthetic-defects.js';
export { makeRng, deriveSeed, type Rng } from './random.js';
