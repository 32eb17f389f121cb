"""Kaldi fbank parity against torchaudio's own output, window table, loading."""

import numpy as np
import pytest
import soundfile as sf

from cavmae_jax import audio

# The official windows for N=16, L=416, as [start, end).
SPEC_TABLE_16_416 = (
    [(0, 416)] * 4
    + [(48, 464), (112, 528), (176, 592), (240, 656), (304, 720), (368, 784), (432, 848),
       (496, 912), (560, 976)]
    + [(608, 1024)] * 3
)


@pytest.fixture(scope="module")
def fbank_npz(parity_dir):
    return np.load(parity_dir / "fbank.npz")


def _wave_names(npz):
    return sorted(k.split("/", 1)[1] for k in npz.files if k.startswith("fbank/"))


def test_fixture_has_all_six_waves(fbank_npz):
    assert len(_wave_names(fbank_npz)) == 6


def test_fbank_matches_torchaudio_every_wave(fbank_npz):
    for name in _wave_names(fbank_npz):
        wave = fbank_npz[f"wave_centered/{name}"]
        ref = fbank_npz[f"fbank/{name}"]
        out = audio.kaldi_fbank(wave, 16000)
        assert out.dtype == np.float32
        assert out.shape == ref.shape, name
        assert out.shape[0] == 1 + (wave.shape[0] - 400) // 160 == audio.num_fbank_frames(
            wave.shape[0])
        err = np.abs(out - ref)
        loud = ref > -10
        if loud.any():
            assert err[loud].max() <= 2e-3, (name, err[loud].max())
        if (~loud).any():
            assert err[~loud].max() <= 5e-2, (name, err[~loud].max())
        # Kaldi facts the fixture README lists: filter 3 is empty, floor is log(float32 eps).
        np.testing.assert_array_equal(out[:, 3], np.float32(np.log(np.finfo(np.float32).eps)))


def test_wave_to_fbank_follows_official_loader(fbank_npz):
    """Raw wave -> mean removal -> fbank -> pad to 1024, as `_wav2fbank` does."""
    name = "tones_noise_10s_int16grid"
    fb, n = audio.wave_to_fbank(fbank_npz[f"wave/{name}"])
    ref = fbank_npz[f"fbank/{name}"]
    assert fb.shape == (1024, 128) and n == ref.shape[0] == 998
    loud = ref > -10
    assert np.abs(fb[:998] - ref)[loud].max() <= 2e-3
    assert np.all(fb[998:] == 0.0)
    # Padding is 0 in the log domain, +1.1329 after normalization.
    np.testing.assert_allclose(audio.normalize(fb[1000]), 5.081 / 4.4849, rtol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 399])
def test_fbank_rejects_under_one_frame(n):
    with pytest.raises(ValueError, match="fewer than one 25 ms frame"):
        audio.kaldi_fbank(np.zeros(n, np.float32))


def test_fbank_exactly_one_frame_and_silence():
    out = audio.kaldi_fbank(np.zeros(400, np.float32))
    assert out.shape == (1, 128)
    np.testing.assert_array_equal(out, np.float32(np.log(np.finfo(np.float32).eps)))
    assert audio.kaldi_fbank(np.zeros(560, np.float32)).shape == (2, 128)
    assert audio.kaldi_fbank(np.zeros(559, np.float32)).shape == (1, 128)


def test_pad_or_cut():
    x = np.ones((10, 128), np.float32)
    assert audio.pad_or_cut(x, 16).shape == (16, 128)
    assert np.all(audio.pad_or_cut(x, 16)[10:] == 0)
    y = np.arange(2000 * 128, dtype=np.float32).reshape(2000, 128)
    np.testing.assert_array_equal(audio.pad_or_cut(y), y[:1024])


def test_window_table_matches_spec():
    table = audio.window_table(16, 416, 1024)
    assert table.dtype == np.int32 and table.shape == (16, 2)
    assert [tuple(r) for r in table.tolist()] == SPEC_TABLE_16_416


def _official_window(k, n, total, length):
    """The official `map_frame_to_spectrogram`, restated for the property check."""
    p = int(round(k * total / n))
    start = max(0, p - length // 2)
    end = start + length
    if end > total:
        end, start = total, max(0, total - length)
    return start, end


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 16, 32])
@pytest.mark.parametrize("length", [96, 192, 304, 416, 512, 624, 720, 1024])
def test_window_table_properties(n, length):
    table = audio.window_table(n, length, 1024)
    assert table.shape == (n, 2)
    assert np.all(table[:, 1] - table[:, 0] == length)
    assert table[:, 0].min() >= 0 and table[:, 1].max() <= 1024
    assert np.all(np.diff(table[:, 0]) >= 0)  # monotone in k
    for k in range(n):
        assert tuple(table[k]) == _official_window(k, n, 1024, length)
        centre = int(round(k * 1024 / n))
        # Unclamped windows contain their centre at offset L // 2.
        if centre - length // 2 >= 0 and centre - length // 2 + length <= 1024:
            assert table[k, 0] + length // 2 == centre


def test_window_table_rounds_like_python():
    """Ties use Python's round (half to even): total=20, N=8 gives centres 2.5 -> 2, 7.5 -> 8."""
    table = audio.window_table(8, 2, 20)
    assert table[1].tolist() == [1, 3]  # round(2.5) = 2
    assert table[3].tolist() == [7, 9]  # round(7.5) = 8


def test_load_audio_resamples_and_picks_channel(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.25 * np.ones_like(t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), sr, subtype="FLOAT")
    first = audio.load_audio(path)
    assert first.dtype == np.float32 and abs(first.shape[0] - 16000) <= 1
    spec = np.abs(np.fft.rfft(first))
    assert abs(np.argmax(spec) * 16000 / first.shape[0] - 440) < 2
    mean = audio.load_audio(path, mix="mean")
    assert abs(float(mean[2000:-2000].mean()) - 0.125) < 0.01
    with pytest.raises(ValueError):
        audio.load_audio(path, mix="left")


def test_wave_to_fbank_long_input_is_cut_not_computed():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 30)).astype(np.float32)
    fb, n = audio.wave_to_fbank(wave)
    assert fb.shape == (1024, 128) and n == 1024
    full = audio.kaldi_fbank(wave - wave.mean())[:1024]
    np.testing.assert_allclose(fb, full, atol=1e-4)


def test_to_pcm16_rounds_like_ffmpeg_s16():
    """Round to nearest (ties to even, like lrintf), clip to int16, read back as k / 32768."""
    x = np.array([0.0, 1.0, -1.0, 2.0, 1.5 / 32768, 2.5 / 32768, -0.4 / 32768, 0.3], np.float32)
    q = audio.to_pcm16(x)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q * 32768, [0, 32767, -32768, 32767, 2, 2, 0, 9830])


def _is_pcm16(x: np.ndarray) -> bool:
    k = x.astype(np.float64) * 32768
    return bool(np.all(k == np.round(k)) and k.min() >= -32768 and k.max() <= 32767)


def test_waveform_is_16bit_pcm_before_the_fbank(tmp_path, monkeypatch):
    """As the official path (a 16-bit WAV read back by torchaudio), the 16 kHz waveform that
    reaches the fbank holds multiples of 1/32768; `pcm16=False` (--no_pcm16) keeps floats."""
    from _av_clips import write_clip

    from data_prep import clips
    from data_prep.inputs import Item

    path = write_clip(tmp_path / "c.mp4", seconds=1.0, fps=10, size=(32, 32), amplitude=0.01)
    seen = []
    real = audio.wave_to_fbank

    def spy(wave, *args, **kwargs):
        seen.append(np.array(wave))
        return real(wave, *args, **kwargs)

    monkeypatch.setattr(audio, "wave_to_fbank", spy)
    item = Item(id="c", split="train", source="c.mp4", video=str(path))
    for pcm16 in (True, False):
        (ex,) = clips.process_clip(item, clips.ConvertConfig(num_frames=2, pcm16=pcm16))
        assert ex["num_fbank_frames"] == audio.num_fbank_frames(seen[-1].shape[0])
        assert _is_pcm16(seen[-1]) is pcm16
    np.testing.assert_array_equal(seen[0], audio.to_pcm16(seen[1]))


def test_stream_audio_equals_load_audio_and_stops_early(tmp_path):
    """Chunks concatenate to the whole decode (PyAV and soundfile + soxr paths); `max_samples`
    gives exactly its prefix."""
    from _av_clips import write_clip

    sr = 44100
    t = np.arange(25 * sr) / sr
    sf.write(tmp_path / "long.wav", np.stack([0.4 * np.sin(2 * np.pi * 440 * t),
                                              0.2 * np.sin(2 * np.pi * 97 * t)], 1), sr)
    mp4 = write_clip(tmp_path / "c.mp4", seconds=3.0, fps=5, size=(16, 16), sample_rate=48000)
    for path in (tmp_path / "long.wav", mp4):
        for mix in ("first", "mean"):
            whole = audio.load_audio(path, mix=mix)
            chunks = list(audio.stream_audio(path, mix=mix))
            assert len(chunks) > 1 and all(c.dtype == np.float32 for c in chunks)
            np.testing.assert_array_equal(np.concatenate(chunks), whole)
            head = audio.load_audio(path, mix=mix, max_samples=20000)
            np.testing.assert_array_equal(head, whole[:20000])
    raw = audio.load_audio(tmp_path / "long.wav", pcm16=False)
    assert not _is_pcm16(raw) and _is_pcm16(audio.load_audio(tmp_path / "long.wav"))
