/**
 * One error type for everything the camera layer refuses or fails at, so the agent can tell a camera
 * problem from its own and print which source it was about (the description never carries passwords).
 */

export type CameraErrorKind =
  /** The configuration cannot work as written (custom pipeline with an appsink, bad printf pattern…). */
  | 'config'
  /** A GStreamer element is not installed; the message names the Debian package. */
  | 'missing-element'
  /** GStreamer could not parse or build the launch string. */
  | 'pipeline'
  /** A file source has nothing usable to read (missing, empty or mixed folder, no file for the pattern). */
  | 'input'
  /** A device node named by the configuration does not exist. */
  | 'device';

export class CameraError extends Error {
  override readonly name = 'CameraError';

  constructor(
    message: string,
    /** Which source this is about, e.g. `file source /data/parts` (see `describeSource`). */
    readonly source: string,
    readonly kind: CameraErrorKind,
    options?: { cause?: unknown },
  ) {
    super(`${source}: ${message}`, options);
  }
}
