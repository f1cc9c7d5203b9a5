"""The camera simulator's SPEAD sender, once closed, says so instead of failing obscurely
(a RESEND_IMAGE that arrived after the camera stopped ended in a ZeroDivisionError)."""

from __future__ import annotations

import numpy as np
import pytest

from fitsflow.camera_sim.sender import ReadoutInfo, SpeadSender


def test_a_closed_sender_refuses_clearly() -> None:
    sender = SpeadSender([("127.0.0.1", 9)], rate_bytes_s=1e6)
    sender.close()
    info = ReadoutInfo("CAM_O_20261207_000001", 1, "G", 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="sender is closed"):
        sender.send_sensor(info, 0, "R22", "S00", np.zeros((4, 4), np.int32), 1)
