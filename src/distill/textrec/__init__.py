"""Text recognition: data in several domains (printed, handwritten), the metrics, and the recogniser's decoding."""
