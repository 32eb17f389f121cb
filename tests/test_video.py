"""Frame choice, PyAV decoding at official indices, resize + center crop, JPEG, ImageNet norm."""

import io
import json
import math

import av
import numpy as np
import pytest
from _av_clips import gray_to_index, write_clip
from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from cavmae_jax import audio, video
from cavmae_jax.data import records
from data_prep import convert


def test_official_frame_indices():
    # 10 s at 25 fps, N=10: int(i * 25) then the official seek-to-(idx - 1).
    idx = video.official_frame_indices(250, 25.0, 10)
    assert idx.tolist() == [0, 24, 49, 74, 99, 124, 149, 174, 199, 224]
    raw = video.official_frame_indices(250, 25.0, 16, seek_offset=False)
    assert raw.tolist() == [int(k * 250 / 16) for k in range(16)]
    # Only the first 10 s count: a 30 s video samples frames 0..249.
    assert video.official_frame_indices(750, 25.0, 16).max() < 250
    # Short video: spread over what exists.
    assert video.official_frame_indices(50, 25.0, 16).max() < 50
    # Segment offset.
    assert video.official_frame_indices(250, 25.0, 4, start_frame=250).tolist() == [
        250, 311, 374, 436]
    with pytest.raises(ValueError):
        video.official_frame_indices(0, 25.0, 16)


def test_resize_center_crop_geometry():
    # 320x240 with a red left quarter: short side 240 -> 224, long 320 -> 298, crop left = 37.
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :80] = (255, 0, 0)
    img[:, 80:] = (0, 0, 255)
    out = video.resize_center_crop(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Red ends at 80 * 298/320 = 74.5 in the resized image, i.e. ~37.5 after the crop.
    red_cols = np.where(out[112, :, 0] > 128)[0]
    assert red_cols.min() == 0 and 35 <= red_cols.max() <= 39
    # Portrait: width is the short side.
    assert video.resize_center_crop(np.zeros((500, 100, 3), np.uint8)).shape == (224, 224, 3)
    # A 224x224 image is returned unchanged.
    same = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(video.resize_center_crop(same), same)
    # PIL input and grayscale work.
    assert video.resize_center_crop(Image.new("L", (300, 400))).shape == (224, 224, 3)


def test_jpeg_round_trip_and_normalize():
    img = np.full((224, 224, 3), (10, 128, 250), np.uint8)
    b = video.encode_jpeg(img)
    assert b[:2] == b"\xff\xd8"
    back = video.decode_jpeg(b)
    assert back.shape == (224, 224, 3) and np.abs(back.astype(int) - img).max() <= 3
    x = video.normalize_image(np.full((2, 4, 4, 3), 255, np.uint8))
    np.testing.assert_allclose(x[0, 0, 0], (1 - video.IMAGENET_MEAN) / video.IMAGENET_STD)


def test_read_frames_picks_official_indices(tmp_path):
    path = write_clip(tmp_path / "c.mp4", seconds=2.0, fps=25, size=(96, 64))
    info = video.probe(path)
    assert info.frame_count == 50 and info.fps == 25.0 and info.has_audio
    frames, idx, fps = video.read_frames(path, num_frames=16)
    assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8
    expected = video.official_frame_indices(50, 25.0, 16)
    np.testing.assert_array_equal(idx, expected)
    got = [gray_to_index(f[100:124, 100:124].mean()) for f in frames]
    assert got == expected.tolist()


def test_read_frames_and_audio_of_same_file(tmp_path):
    path = write_clip(tmp_path / "c.mp4", seconds=1.0, fps=10, size=(64, 64), tone_hz=1000)
    wave = audio.load_audio(path)
    assert abs(wave.shape[0] - 16000) < 800  # AAC priming/trimming
    spec = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spec) * 16000 / wave.shape[0] - 1000) < 5  # first channel, not 3 kHz
    mean = audio.load_audio(path, mix="mean")
    spec = np.abs(np.fft.rfft(mean))
    peak3k = spec[int(3000 * mean.shape[0] / 16000) - 3:int(3000 * mean.shape[0] / 16000) + 4]
    assert peak3k.max() > 0.3 * spec.max()


def test_video_without_video_stream(tmp_path):
    path = write_clip(tmp_path / "a.mp4", seconds=1.0, video=False)
    with pytest.raises(ValueError, match="no video stream"):
        video.probe(path)
    assert audio.load_audio(path).shape[0] > 10000



def _quant_tables(jpeg: bytes) -> dict:
    with Image.open(io.BytesIO(jpeg)) as im:
        return {k: list(v) for k, v in im.quantization.items()}


def test_jpeg_quality_is_the_official_save_image_default(tmp_path):
    """Frames are JPEG quality 75: byte for byte what PIL writes with no quality given (the
    official extraction's torchvision `save_image`); `--jpeg_quality 90` keeps the old one."""
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")  # PIL's defaults, as save_image uses them
    assert video.JPEG_QUALITY == 75 and video.encode_jpeg(img) == buf.getvalue()

    src = tmp_path / "in"
    src.mkdir()
    write_clip(src / "c.mp4", seconds=1.0, fps=10, size=(64, 48))
    for quality in (None, 90):
        out = tmp_path / f"out{quality}"
        extra = [] if quality is None else ["--jpeg_quality", str(quality)]
        assert convert.main(["--input", str(src), "--output", str(out), "--num_frames", "2",
                             "--workers", "1", "--no_progress", *extra]) == 0
        want = quality or 75
        assert json.loads((out / "metadata.json").read_text())["settings"]["jpeg_quality"] == want
        reader = ArrayRecordReader(str(next(out.glob("train.array_record-*"))))
        rec = records.decode(reader.read_all()[0], decode_frames=False)
        reader.close()
        for jpeg in rec["frames_jpeg"]:
            assert _quant_tables(jpeg) == _quant_tables(video.encode_jpeg(img, want))
        assert _quant_tables(video.encode_jpeg(img, 75)) != _quant_tables(
            video.encode_jpeg(img, 90))


def test_probe_estimates_a_missing_frame_count_like_opencv(tmp_path):
    """Matroska stores no frame count: OpenCV (the official extraction) then reports
    floor(duration x fps + 0.5), with the container duration (here the longer audio's)."""
    path = write_clip(tmp_path / "c.mkv", seconds=2.0, fps=10, size=(32, 32), container="matroska",
                      audio_seconds=2.5)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # the container has no count
        duration = c.duration / 1e6
    assert 2.45 < duration < 2.6
    info = video.probe(path)
    assert info.frame_count == math.floor(duration * 10.0 + 0.5) == 25
    assert video.probe(path, "packets").frame_count == 20  # the packets actually there
    with pytest.raises(ValueError, match="frame_count"):
        video.probe(path, "decode")

    # The frame choice follows the count: n = 25 -> int(k * 25 / 4) - 1; packets: n = 20.
    src = tmp_path / "in"
    src.mkdir()
    path.rename(src / "c.mkv")
    got = {}
    for mode in ("opencv", "packets"):
        out = tmp_path / mode
        assert convert.main(["--input", str(src), "--output", str(out), "--num_frames", "4",
                             "--frame_count", mode, "--workers", "1", "--no_progress"]) == 0
        assert json.loads((out / "metadata.json").read_text())["settings"]["frame_count"] == mode
        reader = ArrayRecordReader(str(next(out.glob("train.array_record-*"))))
        rec = records.decode(reader.read_all()[0])
        reader.close()
        got[mode] = rec["source_frame_index"].tolist()
        assert [gray_to_index(f[100:124, 100:124].mean()) for f in rec["frames"]] == got[mode]
    assert got["opencv"] == video.official_frame_indices(25, 10.0, 4).tolist() == [0, 5, 11, 17]
    assert got["packets"] == video.official_frame_indices(20, 10.0, 4).tolist() == [0, 4, 9, 14]
