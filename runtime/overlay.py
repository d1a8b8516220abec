"""Drawing: heat-map overlay of the anomaly map on a frame, a status banner, the evidence layout.

``render`` is the loop's one rendering step: it runs only for a decision some sink wants to see.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from aaclip.contract.score import ScoreParams, normalize_map

ALARM_COLOR = (0, 0, 255)      # BGR red
ANOMALOUS_COLOR = (0, 165, 255)  # orange
NORMAL_COLOR = (0, 160, 0)     # green


def heat_overlay(frame: np.ndarray, anomaly_map: np.ndarray, p: ScoreParams, alpha: float = 0.45) -> np.ndarray:
    """A new BGR image: ``frame`` blended with the JET-coloured normalized map (0 blue .. 1 red), with
    the outline of pixels at or above ``pixel_threshold`` drawn in white."""
    h, w = frame.shape[:2]
    norm = normalize_map(anomaly_map, p)
    if norm.shape != (h, w):
        norm = cv2.resize(norm, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(norm * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(frame, 1.0 - alpha, heat, alpha, 0.0)
    mask = (norm >= p.pixel_threshold).astype(np.uint8)
    if mask.any():
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(h, w) // 200))
    return out


def draw_banner(image: np.ndarray, text: str, color: tuple[int, int, int]) -> np.ndarray:
    """Write ``text`` on a coloured bar across the top of ``image`` (in place; returns it)."""
    h, w = image.shape[:2]
    scale = max(0.35, min(w, h) / 800.0)
    thickness = max(1, int(round(scale * 2)))
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    bar = th + base + 6
    cv2.rectangle(image, (0, 0), (w, bar), color, -1)
    cv2.putText(image, text, (4, bar - base - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return image


def evidence_image(frame: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """The raw frame and its overlay side by side (what the camera saw, and where the model looked)."""
    return np.hstack([frame, overlay])


DECISION_COLORS = {"alarm": ALARM_COLOR, "anomalous": ANOMALOUS_COLOR}


@dataclass(frozen=True)
class View:
    """What a sink that shows pixels receives: the frame as captured and its annotated overlay."""

    frame: np.ndarray
    overlay: np.ndarray


def render(frame: np.ndarray, anomaly_map: np.ndarray, decision, p: ScoreParams) -> View:
    """The overlay of one decision: heat map, hot-pixel outline and a banner with class, the operator's score
    ([0, 1], alarm at 0.5) and state."""
    overlay = heat_overlay(frame, anomaly_map, p)
    draw_banner(overlay, f"{decision.class_name} {decision.score:.2f} {decision.state}",
                DECISION_COLORS.get(decision.state, NORMAL_COLOR))
    return View(frame, overlay)
