"""T-PatchMix, PosAug's scope, the exported network and the official decoder, each against the official rule
(docs/FIDELITY.md) on hand-built inputs.

    .venv/bin/python -m pytest -q tests/test_tpatchmix.py
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pipeline_src.labels.text_parser import parse
from pipeline_src.train import augment

A = "Unilateral pulmonary infection, one infected area, lower left lung."
B = "Unilateral pulmonary infection, one infected area, upper left lung."
R = "Unilateral pulmonary infection, one infected area, middle right lung."
NONE = "Pulmonary infection."
H = W = 96  # thirds of 32 rows, halves of 48 columns


def _batch(texts, size=H):
    ps = [parse(t) for t in texts]
    regions = torch.tensor([list(p.regions) if p.regions is not None else [0] * 6 for p in ps])
    return {"images": torch.rand(len(texts), 1, size, size), "texts": list(texts), "spans": [p.spans for p in ps],
            "regions": regions, "known": torch.tensor([p.regions is not None for p in ps])}


def _perm(seed: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()  # tpatchmix's first draw


def _seed_pairing(n: int, want: dict[int, int]) -> int:
    return next(s for s in range(500) if all(_perm(s, n)[i] == j for i, j in want.items()))


def test_phrase_canonical_and_region():
    assert augment.pos_phrase("..., Lower  LEFT lung and upper right lung") == "lower left lung"
    assert augment.pos_phrase("lower upper left lung") == "upper lower left lung"  # anatomical order
    assert augment.pos_phrase(NONE) is None and augment.pos_phrase("all left lung") is None
    assert augment.phrase_region("lower left lung", H, W) == (64, 96, 0, 48)
    assert augment.phrase_region("upper middle right lung", H, W) == (0, 64, 48, 96)
    assert augment.phrase_region("upper lower left lung", H, W) == (0, 96, 0, 48)  # span of the named thirds


def test_one_block_per_sample_inside_the_targets_own_phrase_region():
    batch = _batch([A, B])
    seed = _seed_pairing(2, {0: 1, 1: 0})
    probs = torch.ones(2, 1, H, W)  # a confident teacher everywhere: the gate keeps every candidate
    _, _, kept, cand = augment.tpatchmix(batch, probs, torch.Generator().manual_seed(seed), 16, 1.0, 0.55)
    for i, text in enumerate([A, B]):
        m = cand[i, 0].bool()
        assert int(m.sum()) == 16 * 16  # ONE 16 x 16 block
        ys, xs = torch.nonzero(m, as_tuple=True)
        y0, y1, x0, x1 = augment.phrase_region(augment.pos_phrase(text), H, W)
        assert y0 <= int(ys.min()) and int(ys.max()) < y1 and x0 <= int(xs.min()) and int(xs.max()) < x1  # a's region
        assert int(ys.max() - ys.min()) == 15 and int(xs.max() - xs.min()) == 15  # a square
    assert torch.equal(kept, cand)


def test_probability_is_per_sample():
    batch = _batch([A, B] * 200)
    probs = torch.ones(400, 1, H, W)
    _, _, kept, cand = augment.tpatchmix(batch, probs, torch.Generator().manual_seed(0), 16, 0.08, 0.55)
    per_sample = cand.flatten(1).sum(1)
    assert set(per_sample.tolist()) <= {0.0, 256.0}  # nothing but whole single blocks
    assert 0.04 < float((per_sample > 0).float().mean()) < 0.12  # ~ p of the samples


def test_opposite_lung_and_phraseless_targets_get_no_block():
    batch = _batch([A, R, NONE, B])
    probs = torch.ones(4, 1, H, W)
    for seed in range(30):
        perm = _perm(seed, 4)
        _, _, _, cand = augment.tpatchmix(batch, probs, torch.Generator().manual_seed(seed), 16, 1.0, 0.55)
        for i in range(4):
            j = perm[i]
            pa, pb = augment.pos_phrase(batch["texts"][i]), augment.pos_phrase(batch["texts"][j])
            conflict = pa is not None and pb is not None and pa.split()[-2] != pb.split()[-2]
            if pa is None or conflict:
                assert not cand[i].any(), (seed, i, j)
            else:
                assert cand[i].any(), (seed, i, j)  # p = 1: every allowed sample gets its block (a phraseless b too)


def test_gate_keeps_a_block_only_where_the_teacher_sees_lesion_on_the_partner():
    batch = _batch([A, B])
    seed = _seed_pairing(2, {0: 1, 1: 0})
    bg = torch.zeros(2, 1, H, W)  # a teacher that sees no lesion anywhere: nothing is kept, texts stay
    mixed, target, kept, cand = augment.tpatchmix(batch, bg, torch.Generator().manual_seed(seed), 16, 1.0, 0.55)
    assert cand.any() and not kept.any() and mixed["texts"] == batch["texts"]
    assert torch.equal(target, bg)
    # official oddity (paste_rejected=True): the rejected block stays in the image; false keeps it out
    m = cand[0, 0].bool()
    assert torch.equal(mixed["images"][0, 0][m], batch["images"][1, 0][m])
    clean, *_ = augment.tpatchmix(batch, bg, torch.Generator().manual_seed(seed), 16, 1.0, 0.55, paste_rejected=False)
    assert torch.equal(clean["images"], batch["images"])
    # lesion fraction at the threshold: kept; just below: rejected
    for value, keep in ((0.55, True), (0.54, False)):
        probs = torch.zeros(2, 1, H, W)
        probs[1, 0][m] = value  # b's teacher probability inside a's block
        _, _, kept, _ = augment.tpatchmix(batch, probs, torch.Generator().manual_seed(seed), 16, 1.0, 0.55)
        assert bool(kept[0].any()) is keep


def test_pseudo_label_follows_the_official_mixing_rule_and_text_is_rewritten():
    batch = _batch([A, B])
    seed = _seed_pairing(2, {0: 1, 1: 0})
    probs = torch.rand(2, 1, H, W) * 0.4
    probs[1] += 0.6  # b: confident lesion everywhere
    mixed, mix_probs, kept, _ = augment.tpatchmix(batch, probs, torch.Generator().manual_seed(seed), 16, 1.0, 0.55)
    m = kept[0, 0].bool()
    assert m.any()
    want = probs[0, 0] * ~m + probs[1, 0] * m  # (1 - M) p_a + M p_b
    assert torch.allclose(mix_probs[0, 0], want)
    target = (mix_probs >= 0.5).float()  # the caller's rule 4 (methods.SemiMedRef.strong)
    assert torch.equal(target[0, 0][m], torch.ones(int(m.sum()))) and not target[0, 0][~m].any()
    # only a's phrase is rewritten, to "pa and pb"; a's count words stay
    assert mixed["texts"][0] == "Unilateral pulmonary infection, one infected area, lower left lung and upper left lung."
    assert augment.mix_text(A, A) == A and augment.mix_text(A, NONE) == A
    assert mixed["regions"][0].tolist() == (batch["regions"][0] | batch["regions"][1]).tolist()


def test_posaug_touches_only_the_unlabelled_students_reports():
    from pipeline_src.train.methods import SemiMedRef
    from pipeline_src.train.params import TrainParams

    seen = []

    class Probe(SemiMedRef):
        def forward(self, net, images, texts):
            seen.append((net is self.modules["teacher"], list(texts)))
            b = len(texts)
            return {"logits": torch.zeros(b, 1, *images.shape[-2:], requires_grad=True),
                    "img_emb": torch.randn(b, 8, requires_grad=True), "txt_emb": torch.randn(b, 8), "feats": []}

    def run(scope):
        cfg = TrainParams.model_validate({"posaug": {"p": 1.0, "mode": "unknown", "scope": scope},
                                          "tpatchmix": {"enabled": False}, "augment": {"flip_p": 0.0}})
        net = torch.nn.Conv2d(1, 1, 1)
        net.uses_text = True
        m = Probe(cfg, net, SimpleNamespace(unsup=[0.3], momentum=[0.99]), tokenize=None)
        seen.clear()
        lab, unl = _batch([A, B], 32), _batch([B, A], 32)
        lab["masks"] = torch.zeros(2, 1, 32, 32)
        m.loss(0, lab, unl, torch.Generator().manual_seed(0))
        return list(seen)

    calls = run("unlabelled")
    # forward order: labelled student, teacher (weak), unlabelled student (strong), unlabelled student (weak, ITCL)
    assert [t for t, _ in calls] == [False, True, False, False]
    assert calls[0][1] == [A, B]  # labelled reports whole
    assert calls[1][1] == [B, A] and calls[3][1] == [B, A]  # teacher and the ITCL pass: original reports
    assert all("unknown" in t for t in calls[2][1])  # the unlabelled student's reports lost their positions
    both = run("both")
    assert all("unknown" in t for t in both[0][1])  # the earlier scope, kept as an option


def test_exported_network_is_the_student_unless_asked():
    from pipeline_src.train.methods import METHODS
    from pipeline_src.train.params import TrainParams

    net = torch.nn.Conv2d(1, 1, 1)
    sched = SimpleNamespace(unsup=[0.0], momentum=[0.0])
    for name in ("semi_medref", "mean_teacher", "cutmix_ssl"):
        m = METHODS[name](TrainParams(), net, sched, tokenize=None)
        assert m.exported == "student" and m.export() is m.student
        t = METHODS[name](TrainParams.model_validate({"ssl": {"export": "teacher"}}), net, sched, tokenize=None)
        assert t.exported == "teacher" and t.export() is t.modules["teacher"] and t.export() is not t.student
    sup = METHODS["supervised"](TrainParams.model_validate({"ssl": {"export": "teacher"}}), net, sched, None)
    assert sup.exported == "student"  # no teacher to export


def test_official_decoder_has_positions_self_attention_and_a_small_cross_attention_scale():
    from pipeline_src.models import build_model
    from pipeline_src.models.fusion import GuideLayer, sinusoid
    from pipeline_src.models.params import ModelParams

    pe = sinusoid(10, 8)
    assert torch.allclose(pe[3, 0], torch.sin(torch.tensor(3.0))) and torch.allclose(pe[3, 1], torch.cos(torch.tensor(3.0)))
    model = build_model(ModelParams())
    layers = [m for m in model.modules() if isinstance(m, GuideLayer)]
    assert len(layers) == 3  # strides 32, 16, 8 (utils/model.py::LanGuideMedSeg)
    assert all(abs(float(g.scale) - 0.01) < 1e-9 and g.self_attn.num_heads == 1 for g in layers)
    assert [g.text_project[0].out_channels for g in layers] == [24, 12, 9]
    # positions reach the output: identical pixel tokens get different outputs at different places
    g = layers[-1].eval()
    x = torch.ones(1, 16, g.norm1.normalized_shape[0])
    text = torch.randn(1, g.text_project[0].in_channels, g.text_project[2].in_features)
    out = g(x, text)
    assert not torch.allclose(out[0, 0], out[0, 5])
    legacy = build_model(ModelParams(decoder="medref"))
    assert not any(isinstance(m, GuideLayer) for m in legacy.modules())
