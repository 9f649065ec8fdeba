"""Integrations with YOLO code bases (ultralytics, the classic YOLOv5/YOLOv7 repositories).

Nothing here imports a detector framework at ``import yolo_attention`` time.
"""
