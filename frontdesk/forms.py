"""The desk's forms: they parse and validate input; the services decide and write."""

from __future__ import annotations

from django import forms
from django.utils import timezone

REASON_MAX = 200


class PatientSearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(
            attrs={"placeholder": "Name, e-mail, phone or date of birth (YYYY-MM-DD)", "size": 50}
        ),
    )


class PatientRegisterForm(forms.Form):
    full_name = forms.CharField(max_length=200)
    email = forms.EmailField(max_length=254, help_text="They get a link here to set a password.")
    phone = forms.CharField(max_length=32, required=False)
    date_of_birth = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Date of birth"
    )

    def clean_full_name(self) -> str:
        name = self.cleaned_data["full_name"].strip()
        if not name:
            raise forms.ValidationError("A name is required.")
        return name

    def clean_date_of_birth(self):
        born = self.cleaned_data["date_of_birth"]
        if born is not None and born > timezone.localdate():
            raise forms.ValidationError("A date of birth cannot be in the future.")
        return born


class DayForm(forms.Form):
    """A day to show (the board, slots); missing or bad means today."""

    day = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class BookingForm(forms.Form):
    """A slot for a patient; the slot's ids come from the open-slots list just shown."""

    slot = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    reason = forms.CharField(max_length=2000, required=False, widget=forms.TextInput())


class RescheduleForm(forms.Form):
    slot = forms.IntegerField(min_value=1, widget=forms.HiddenInput)


class CancelForm(forms.Form):
    """The visits to cancel (ids shown on the confirmation page) and why."""

    ids = forms.CharField(widget=forms.HiddenInput)
    reason = forms.CharField(
        max_length=REASON_MAX,
        help_text="Sent to the patient with the cancellation.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    confirm = forms.BooleanField(required=True, widget=forms.HiddenInput, initial=True)

    def clean_ids(self) -> list[int]:
        raw = [part for part in self.cleaned_data["ids"].split(",") if part.strip()]
        try:
            ids = sorted({int(part) for part in raw})
        except ValueError as exc:
            raise forms.ValidationError("Bad selection.") from exc
        if not ids:
            raise forms.ValidationError("Nothing selected.")
        return ids

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why (the patient is told).")
        return reason


class WalkInForm(forms.Form):
    provider = forms.TypedChoiceField(coerce=int, choices=())
    reason = forms.CharField(max_length=2000, required=False)

    def __init__(self, *args, providers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider"].choices = [(p.pk, p.full_name) for p in providers]


class QueueRemoveForm(forms.Form):
    reason = forms.CharField(max_length=REASON_MAX)

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why.")
        return reason
