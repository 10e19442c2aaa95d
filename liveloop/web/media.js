// The camera and microphone, and the thumbnail taken from the camera.

/** Asks for camera and microphone; falls back to either alone. Returns {stream, problem}:
 * a stream (or null) and, when something is missing, a sentence saying what. */
export async function openMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: null, problem: "This page cannot use a camera here: open it over HTTPS or on localhost. You can still chat." };
  }
  const attempts = [{ video: true, audio: true }, { video: true }, { audio: true }];
  let last = null;
  for (const constraints of attempts) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      const missing = !constraints.video ? "No camera found" : !constraints.audio ? "No microphone found" : null;
      return { stream, problem: missing && `${missing}; the other works. ` };
    } catch (error) {
      last = error;
      if (error.name === "NotAllowedError" || error.name === "SecurityError") break;
    }
  }
  const words = {
    NotAllowedError: "Camera and microphone access was denied. You can still chat; to be seen and heard, allow them in the browser's site settings and reload.",
    SecurityError: "Camera and microphone access was denied. You can still chat; to be seen and heard, allow them in the browser's site settings and reload.",
    NotFoundError: "No camera or microphone was found. You can still chat.",
    NotReadableError: "The camera or microphone is in use by another program. You can still chat.",
  };
  return { stream: null, problem: words[last?.name] ?? `Camera and microphone unavailable (${last?.name ?? "unknown"}). You can still chat.` };
}

/** A small JPEG data URL of the video's current frame, under `limit` characters; "" if
 * there is no frame. */
export function thumbnail(video, limit = 60000) {
  if (!video.videoWidth) return "";
  const canvas = document.createElement("canvas");
  canvas.width = 96;
  canvas.height = Math.round((96 * video.videoHeight) / video.videoWidth) || 72;
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  for (const quality of [0.7, 0.5, 0.3]) {
    const url = canvas.toDataURL("image/jpeg", quality);
    if (url.length <= limit) return url;
  }
  return "";
}
