"""Soft vectors around fixed text: steer the residuals of text the attacker does not own (`softreach run steer`)."""
