import pytest
import torch

from wd_lightning import InvalidArgumentError, SyntheticRegressionDataModule
from wd_lightning.training.data import EpochSeededSampler, make_linear_data


def test_book_defaults_and_shapes():
    data = SyntheticRegressionDataModule()
    assert (data.num_train, data.num_val, data.num_inputs, data.batch_size) == (20, 100, 200, 5)
    assert (data.w_true, data.b_true, data.noise) == (0.01, 0.05, 0.01)
    data.setup("fit")
    assert data.X_train.shape == (20, 200) and data.y_train.shape == (20, 1)
    assert data.X_val.shape == (100, 200) and data.y_val.shape == (100, 1)


def test_labels_follow_the_book_formula_up_to_noise():
    data = SyntheticRegressionDataModule(noise=0.01)
    data.setup()
    clean = data.X_train.sum(1, keepdim=True) * 0.01 + 0.05
    residual = data.y_train - clean
    assert residual.abs().max() < 0.05  # 5σ
    assert residual.std() > 0.001  # the noise is really there


def test_noise_free_labels_are_exact():
    X, y = make_linear_data(7, 3, 0.5, -1.0, 0.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, X @ torch.full((3, 1), 0.5) - 1.0)


def test_data_depend_on_data_seed_only_not_global_seed():
    torch.manual_seed(1)
    first = SyntheticRegressionDataModule(data_seed=7)
    first.setup()
    torch.manual_seed(2)
    second = SyntheticRegressionDataModule(data_seed=7)
    second.setup()
    assert torch.equal(first.X_train, second.X_train)
    assert torch.equal(first.y_val, second.y_val)
    other = SyntheticRegressionDataModule(data_seed=8)
    other.setup()
    assert not torch.equal(first.X_train, other.X_train)


def test_train_and_validation_sets_differ():
    data = SyntheticRegressionDataModule()
    data.setup()
    assert not torch.equal(data.X_train, data.X_val[:20])


def test_training_batches_cover_the_set_each_epoch_in_a_seeded_order():
    data = SyntheticRegressionDataModule()
    loader = data.train_dataloader()
    epoch0 = torch.cat([x for x, _ in loader])
    assert len(list(loader)) == 4
    # The same rows, permuted.
    assert sorted(epoch0[:, 0].tolist()) == sorted(data.X_train[:, 0].tolist())
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([x for x, _ in loader])
    assert not torch.equal(epoch0, epoch1)
    # A fresh loader at the same epoch (as after a resume) gives the same order.
    again = SyntheticRegressionDataModule().train_dataloader()
    again.sampler.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in again]), epoch1)


def test_order_does_not_depend_on_global_rng():
    sampler = EpochSeededSampler(10, seed=3)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(123)
    assert list(sampler) == first


def test_validation_is_one_batch_by_default():
    data = SyntheticRegressionDataModule()
    batches = list(data.val_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (100, 200)
    assert len(list(SyntheticRegressionDataModule(val_batch_size=30).val_dataloader())) == 4


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_train", 0),
        ("num_val", 0),
        ("num_inputs", -3),
        ("batch_size", 0),
        ("val_batch_size", 0),
        ("noise", -0.1),
        ("noise", float("nan")),
        ("w_true", float("inf")),
        ("data_seed", -1),
        ("batch_size", 2.5),
    ],
)
def test_bad_arguments_are_rejected_by_name(argument, value):
    with pytest.raises(InvalidArgumentError, match=f"^{argument}="):
        SyntheticRegressionDataModule(**{argument: value})


def test_classification_data_are_seeded_and_labelled_by_a_teacher():
    from wd_lightning import SyntheticClassificationDataModule

    data = SyntheticClassificationDataModule(num_train=64, num_val=32, num_inputs=5, num_classes=4)
    data.setup()
    assert data.X_train.shape == (64, 5) and data.y_train.shape == (64,)
    assert data.y_train.dtype == torch.int64
    assert set(data.y_train.tolist()) <= {0, 1, 2, 3} and len(set(data.y_train.tolist())) > 1
    again = SyntheticClassificationDataModule(num_train=64, num_val=32, num_inputs=5, num_classes=4)
    again.setup()
    assert torch.equal(data.X_val, again.X_val) and torch.equal(data.y_val, again.y_val)
    # Noise-free labels are a linear function of the inputs: a linear probe fits them exactly.
    clean = SyntheticClassificationDataModule(num_train=200, num_inputs=3, noise=0.0)
    clean.setup()
    solution = torch.linalg.lstsq(clean.X_train, torch.nn.functional.one_hot(clean.y_train).float())
    assert (clean.X_train @ solution.solution).argmax(1).eq(clean.y_train).float().mean() > 0.8


@pytest.mark.parametrize(
    ("argument", "value"), [("num_classes", 1), ("noise", -1.0), ("num_inputs", 0)]
)
def test_classification_bad_arguments(argument, value):
    from wd_lightning import SyntheticClassificationDataModule

    with pytest.raises(InvalidArgumentError, match=f"^{argument}="):
        SyntheticClassificationDataModule(**{argument: value})


def test_the_test_set_is_its_own_draw_of_its_own_size():
    data = SyntheticRegressionDataModule(num_test=30)
    data.setup()
    assert data.X_test.shape == (30, 200)
    # Drawn after the training and held-out examples of data_seed's stream: none repeats.
    everything = torch.cat([data.X_train, data.X_val])
    assert not (torch.cdist(data.X_test, everything) < 1e-6).any()
    loader = data.test_dataloader()
    assert [inputs.shape[0] for inputs, _ in loader] == [30]
    seeded = SyntheticRegressionDataModule(num_test=30, test_seed=7)
    seeded.setup()
    assert not torch.equal(seeded.X_test, data.X_test)
    # The training and held-out data do not depend on the test split.
    torch.testing.assert_close(seeded.X_train, data.X_train)
    torch.testing.assert_close(seeded.y_val, data.y_val)


def test_a_test_seed_equal_to_the_data_seed_is_refused():
    with pytest.raises(InvalidArgumentError, match="test_seed=3 is not allowed"):
        SyntheticRegressionDataModule(data_seed=3, test_seed=3)


def test_classification_test_labels_come_from_the_same_teacher():
    from wd_lightning import SyntheticClassificationDataModule

    data = SyntheticClassificationDataModule(num_inputs=5, noise=0.0, test_seed=9)
    data.setup()
    teacher = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(data.y_train, (data.X_train @ teacher).argmax(dim=1))
    assert torch.equal(data.y_test, (data.X_test @ teacher).argmax(dim=1))
