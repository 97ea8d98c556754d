"""The front desk's console pages. Thin: parse (forms), read (frontdesk.selectors, scoped to
the signed-in staff member), write through one service of accounts or consultations, audit
what patient data was shown, render in the clinic's time zone."""

from __future__ import annotations

import functools
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.tokens import default_token_generator
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.encoding import force_str
from django.utils.http import urlencode, urlsafe_base64_decode
from django.views.decorators.http import require_POST

from accounts import services as account_services
from accounts.models import Role, User
from consultations import services as clinic_services
from consultations.audit import OBJECT_TYPES, AuditAction, audit_objects, audit_typed_rows
from frontdesk import forms, selectors
from medease.exceptions import ApplicationError, NotFound
from workers import services as worker_services
from workers.models import NotificationStatus

PATIENT_PROFILE = "patient_profile"


def desk_view(view):
    """A desk page: a clinic to work for, the desk's NotFound as the console's 404, and the
    clinic's zone active while the page renders. (urls.py wraps every desk page in the admin
    site's own check: signed-in staff, its login redirect and its MFA gate.)"""

    @functools.wraps(view)
    def inner(request, *args, **kwargs):
        organization = selectors.desk_organization(
            user=request.user, organization_id=request.GET.get("organization")
        )
        if organization is None:
            raise Http404("No clinic to work for.")
        request.desk_organization = organization
        with timezone.override(selectors.desk_zone(organization)):
            try:
                response = view(request, *args, **kwargs)
            except NotFound as exc:
                raise Http404(exc.message) from exc
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
        return response

    return inner


# The desk's own menu, on every desk page (entries whose page is not there are left out).
NAV = [
    ("frontdesk:board", "Day board"),
    ("frontdesk:patients", "Patients"),
    ("frontdesk:patient_register", "Register a patient"),
    ("frontdesk:book", "Book by phone"),
    ("frontdesk:walk_ins", "Walk-ins"),
    ("frontdesk:week", "Week"),
    ("frontdesk:outbox", "Outbox"),
]


def desk_nav(current: str = "") -> list[dict]:
    links = []
    for name, label in NAV:
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        links.append({"url": url, "label": label, "current": url == current})
    return links


def _page(request, template: str, title: str, **context) -> TemplateResponse:
    organization = request.desk_organization
    return TemplateResponse(
        request,
        f"frontdesk/{template}",
        {
            **admin.site.each_context(request),
            "title": title,
            "organization": organization,
            "timezone_name": organization.timezone,
            "desk_nav": desk_nav(request.path),
            **context,
        },
    )


def _audit_read(request, *, patients=(), objects=()) -> None:
    """The patient data a page showed, as read events: one INSERT per request."""
    organization_id = request.desk_organization.pk
    rows = [(PATIENT_PROFILE, p.pk, p.pk, organization_id) for p in patients]
    rows += [
        (OBJECT_TYPES[obj._meta.model_name], obj.pk, obj.patient_id, obj.organization_id)
        for obj in objects
    ]
    audit_typed_rows(request=request, action=AuditAction.READ, rows=rows)


def _error(request, exc: ApplicationError) -> None:
    details = [msg for field_errors in exc.fields.values() for msg in field_errors]
    messages.error(request, " ".join([exc.message, *details]))


# --- Home ----------------------------------------------------------------------------------------


@desk_view
def home(request):
    return _page(request, "home.html", "Front desk")


# --- Patients ------------------------------------------------------------------------------------


@desk_view
def patients(request):
    """Patients known to the clinic, searchable; the names shown are audited reads."""
    form = forms.PatientSearchForm(request.GET or None)
    query = form.cleaned_data["q"] if form.is_valid() else ""
    found = selectors.desk_patients(
        user=request.user, organization=request.desk_organization, query=query
    )
    page = Paginator(found, selectors.PATIENTS_PAGE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    _audit_read(request, patients=rows)
    return _page(request, "patients.html", "Patients", form=form, page=page, rows=rows, query=query)


@desk_view
def patient(request, patient_id: int):
    """A patient's contact details, visits, queue places and record entries (all audited)."""
    found = selectors.desk_patient_get(
        user=request.user, organization=request.desk_organization, patient_id=patient_id
    )
    overview = selectors.desk_patient_overview(
        user=request.user, organization=request.desk_organization, patient=found
    )
    _audit_read(
        request,
        patients=[found],
        objects=[*overview.upcoming, *overview.past, *overview.queue, *overview.records],
    )
    return _page(
        request,
        "patient.html",
        found.full_name,
        patient=found,
        profile=found.patient_profile,
        overview=overview,
        invite_pending=not found.has_usable_password(),
        book_url=f"{reverse('frontdesk:book')}?{urlencode({'patient': found.pk})}",
        walk_in_url=f"{reverse('frontdesk:walk_ins')}?{urlencode({'patient': found.pk})}",
    )


@desk_view
def patient_register(request):
    """Register a new patient at the desk; they get an e-mail to set their password."""
    form = forms.PatientRegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = account_services.patient_register_at_desk(
                organization=request.desk_organization,
                email=form.cleaned_data["email"],
                full_name=form.cleaned_data["full_name"],
                phone=form.cleaned_data["phone"],
                date_of_birth=form.cleaned_data["date_of_birth"],
            )
        except ApplicationError as exc:
            for name, errors in exc.fields.items():
                for error in errors:
                    form.add_error(name if name in form.fields else None, error)
            if not exc.fields:
                form.add_error(None, exc.message)
        else:
            audit_typed_rows(
                request=request,
                action=AuditAction.CREATE,
                rows=[(PATIENT_PROFILE, created.pk, created.pk, request.desk_organization.pk)],
            )
            messages.success(
                request,
                f"{created.full_name} is registered; an e-mail to set a password was sent to "
                f"{created.email}.",
            )
            return HttpResponseRedirect(reverse("frontdesk:patient", args=[created.pk]))
    return _page(request, "patient_register.html", "Register a patient", form=form)


@require_POST
@desk_view
def patient_invite_resend(request, patient_id: int):
    """Send the set-password e-mail again (a patient who has not set one yet)."""
    found = selectors.desk_patient_get(
        user=request.user, organization=request.desk_organization, patient_id=patient_id
    )
    if found.has_usable_password():
        messages.info(request, "This patient has already set a password.")
    elif account_services.patient_set_password_email_send(
        user=found, organization=request.desk_organization
    ):
        messages.success(request, f"The set-password e-mail was sent again to {found.email}.")
    else:
        messages.error(request, "The e-mail could not be sent; try again later.")
    return HttpResponseRedirect(reverse("frontdesk:patient", args=[found.pk]))


# --- Setting a password (the patient, from the e-mail; no console access) ------------------------


def _user_from_link(uidb64: str, token: str) -> User | None:
    try:
        user_id = int(force_str(urlsafe_base64_decode(uidb64)))
    except (TypeError, ValueError, OverflowError):
        return None
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or not default_token_generator.check_token(user, token):
        return None
    return user


def set_password(request, uidb64: str, token: str):
    """The page behind the e-mail's link: choose a password (the link then stops working)."""
    user = _user_from_link(uidb64, token)
    form = SetPasswordForm(user, request.POST or None) if user is not None else None
    done = False
    if form is not None and request.method == "POST" and form.is_valid():
        # The form validated the password; the service writes it and ends old sessions.
        account_services.user_set_password(user=user, password=form.cleaned_data["new_password1"])
        done = True
    context = {
        **admin.site.each_context(request),
        "title": "Set your password",
        "form": form,
        "valid_link": user is not None,
        "done": done,
    }
    response = TemplateResponse(request, "frontdesk/set_password.html", context)
    response["Referrer-Policy"] = "no-referrer"  # the token is in this page's URL
    return response


# --- Booking by phone ----------------------------------------------------------------------------


def _patient_picker(request, organization):
    """The patient chosen by ``?patient=`` (404 unless the clinic's), and, until one is,
    the first page of a ``?q=`` search: ``(chosen, search form, found)``."""
    chosen = None
    if request.GET.get("patient"):
        chosen = selectors.desk_patient_get(
            user=request.user, organization=organization, patient_id=_int(request.GET["patient"])
        )
    found = []
    search = forms.PatientSearchForm(request.GET or None)
    if chosen is None and search.is_valid() and search.cleaned_data["q"]:
        found = list(
            selectors.desk_patients(
                user=request.user, organization=organization, query=search.cleaned_data["q"]
            )[: selectors.PATIENTS_PAGE]
        )
    return chosen, search, found


@desk_view
def book(request):
    """Pick a patient, a provider and a day; the open slots; book one for the patient (the
    API's booking service: the same checks and the same confirmation e-mail)."""
    organization = request.desk_organization
    tz = selectors.desk_zone(organization)
    day = selectors.desk_parse_day(request.GET.get("day"), tz=tz)
    providers = selectors.desk_providers(organization=organization)
    chosen_patient, search, found = _patient_picker(request, organization)
    chosen_provider = None
    if request.GET.get("provider"):
        chosen_provider = selectors.desk_provider_get(
            user=request.user, organization=organization, provider_id=request.GET["provider"]
        )
    form = forms.BookingForm(request.POST or None)
    if request.method == "POST" and chosen_patient is not None and form.is_valid():
        slot = selectors.desk_slot_get(organization=organization, slot_id=form.cleaned_data["slot"])
        try:
            consultation, _created = clinic_services.consultation_book(
                patient=chosen_patient, slot_id=slot.pk, reason=form.cleaned_data["reason"]
            )
        except ApplicationError as exc:
            _error(request, exc)
        else:
            audit_objects(request=request, action=AuditAction.CREATE, objects=[consultation])
            start = timezone.localtime(consultation.scheduled_start)
            messages.success(
                request,
                f"Booked {chosen_patient.full_name} with {slot.provider.full_name} on "
                f"{start:%a %d %b %Y %H:%M} ({organization.timezone}); the patient is e-mailed.",
            )
            return HttpResponseRedirect(reverse("frontdesk:patient", args=[chosen_patient.pk]))
    slots = (
        selectors.desk_open_slots(provider=chosen_provider, day=day, tz=tz)
        if chosen_provider is not None
        else []
    )
    _audit_read(request, patients=[*found, *([chosen_patient] if chosen_patient else [])])
    return _page(
        request,
        "book.html",
        "Book by phone",
        search=search,
        found=found,
        patient=chosen_patient,
        providers=providers,
        provider=chosen_provider,
        day=day,
        previous_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1),
        slots=slots,
        form=form,
    )


def _int(raw) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise NotFound("Not found.") from exc


@desk_view
def reschedule(request, consultation_id: int):
    """Move a booked visit to another open slot of its provider (one atomic move)."""
    organization = request.desk_organization
    tz = selectors.desk_zone(organization)
    consultation = selectors.desk_consultation_get(
        user=request.user, organization=organization, consultation_id=consultation_id
    )
    day = selectors.desk_parse_day(
        request.GET.get("day")
        or timezone.localtime(consultation.scheduled_start, tz).date().isoformat(),
        tz=tz,
    )
    form = forms.RescheduleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            new = clinic_services.consultation_reschedule(
                consultation=consultation, actor=request.user, slot_id=form.cleaned_data["slot"]
            )
        except ApplicationError as exc:
            _error(request, exc)
        else:
            audit_objects(request=request, action=AuditAction.UPDATE, objects=[consultation, new])
            start = timezone.localtime(new.scheduled_start)
            messages.success(
                request,
                f"{new.patient.full_name}'s visit is moved to {start:%a %d %b %Y %H:%M} "
                f"({organization.timezone}); the patient is e-mailed.",
            )
            return HttpResponseRedirect(reverse("frontdesk:patient", args=[new.patient_id]))
    slots = selectors.desk_open_slots(provider=consultation.provider, day=day, tz=tz)
    _audit_read(request, objects=[consultation])
    return _page(
        request,
        "reschedule.html",
        "Reschedule a visit",
        consultation=consultation,
        day=day,
        previous_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1),
        slots=slots,
    )


# Longer selections are refused: a confirmation page listing hundreds of visits is not read.
CANCEL_MAX = 100


@desk_view
def cancel(request):
    """Cancel visits with a reason, after a page that lists them and who will be told."""
    organization = request.desk_organization
    raw_ids = request.POST.get("ids") if request.method == "POST" else request.GET.get("ids", "")
    form = forms.CancelForm(request.POST or None, initial={"ids": raw_ids, "confirm": True})
    try:
        ids = sorted({int(part) for part in (raw_ids or "").split(",") if part.strip()})
    except ValueError as exc:
        raise Http404("Bad selection.") from exc
    if len(ids) > CANCEL_MAX:
        messages.error(request, f"Select at most {CANCEL_MAX} visits to cancel at once.")
        return HttpResponseRedirect(reverse("frontdesk:board"))
    visits = selectors.desk_consultations(user=request.user, organization=organization, ids=ids)
    if not visits:
        raise Http404("Nothing to cancel.")
    back = request.GET.get("next") or request.POST.get("next") or ""
    if not back.startswith("/admin/"):
        back = reverse("frontdesk:board")
    if request.method == "POST" and form.is_valid():
        cancelled, refused = [], []
        for visit in visits:
            try:
                cancelled.append(
                    clinic_services.consultation_cancel(
                        consultation=visit, actor=request.user, reason=form.cleaned_data["reason"]
                    )
                )
            except ApplicationError as exc:
                refused.append(f"{visit.patient.full_name}: {exc.message}")
        if cancelled:
            audit_objects(request=request, action=AuditAction.UPDATE, objects=cancelled)
            messages.success(
                request,
                f"{len(cancelled)} visit(s) cancelled; "
                f"{len({c.patient_id for c in cancelled})} patient(s) are e-mailed.",
            )
        if refused:
            messages.warning(request, "Not cancelled: " + "; ".join(refused))
        return HttpResponseRedirect(back)
    cancellable = [v for v in visits if v.status == "scheduled"]
    _audit_read(request, objects=visits)
    return _page(
        request,
        "cancel.html",
        "Cancel visits",
        form=form,
        visits=visits,
        cancellable=cancellable,
        told=sorted({v.patient for v in cancellable}, key=lambda p: p.full_name),
        next=back,
    )


# --- The day board, the week, the print layout ---------------------------------------------------


def _safe_next(request, default: str) -> str:
    back = request.POST.get("next") or request.GET.get("next") or ""
    # Only the console's own pages: never an open redirect.
    return back if back.startswith("/admin/") and not back.startswith("//") else default


@desk_view
def board(request):
    """Every provider's visits of a day (any day: date picker, previous/next) with their
    actions, and today's walk-in queues; ``provider`` + ``print`` give one provider's day to
    print."""
    organization = request.desk_organization
    tz = selectors.desk_zone(organization)
    day = selectors.desk_parse_day(request.GET.get("day"), tz=tz)
    provider = None
    if request.GET.get("provider"):
        provider = selectors.desk_provider_get(
            user=request.user, organization=organization, provider_id=request.GET["provider"]
        )
    rows = selectors.desk_day(
        user=request.user,
        organization=organization,
        day=day,
        provider_id=provider.pk if provider else None,
    )
    _audit_read(request, objects=[obj for row in rows for obj in (*row.consultations, *row.queue)])
    printing = provider is not None and request.GET.get("print") == "1"
    return _page(
        request,
        "board_print.html" if printing else "board.html",
        f"{provider.full_name}, {day:%a %d %b %Y}" if printing else "Day board",
        rows=rows,
        day=day,
        today=timezone.now().astimezone(tz).date(),
        previous_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1),
        provider=provider,
        now=timezone.now(),
    )


@desk_view
def week(request):
    """One provider's week (Monday to Sunday) around a day."""
    organization = request.desk_organization
    tz = selectors.desk_zone(organization)
    day = selectors.desk_parse_day(request.GET.get("day"), tz=tz)
    providers = selectors.desk_providers(organization=organization)
    provider = None
    if request.GET.get("provider"):
        provider = selectors.desk_provider_get(
            user=request.user, organization=organization, provider_id=request.GET["provider"]
        )
    elif providers:
        provider = providers[0]
    monday = day - timedelta(days=day.weekday())
    days = (
        selectors.desk_week(
            user=request.user, organization=organization, provider=provider, monday=monday
        )
        if provider
        else []
    )
    _audit_read(request, objects=[c for _day, visits in days for c in visits])
    return _page(
        request,
        "week.html",
        "Week",
        providers=providers,
        provider=provider,
        days=days,
        day=day,
        monday=monday,
        previous_week=monday - timedelta(days=7),
        next_week=monday + timedelta(days=7),
    )


# Board actions on one visit: the service each calls and what the desk is told.
VISIT_ACTIONS = {
    "check-in": (clinic_services.consultation_check_in, "checked in"),
    "undo-check-in": (clinic_services.consultation_check_in_undo, "no longer checked in"),
    "start": (clinic_services.consultation_start, "started"),
    "no-show": (clinic_services.consultation_mark_no_show, "marked as a no-show"),
}


@require_POST
@desk_view
def visit_action(request, consultation_id: int, action: str):
    """Check in, undo a check-in, start or mark a no-show, from the board (cancelling has its
    confirmation page)."""
    if action not in VISIT_ACTIONS:
        raise Http404("No such action.")
    service, done = VISIT_ACTIONS[action]
    consultation = selectors.desk_consultation_get(
        user=request.user, organization=request.desk_organization, consultation_id=consultation_id
    )
    try:
        service(consultation=consultation, actor=request.user)
    except ApplicationError as exc:
        _error(request, exc)
    else:
        audit_objects(request=request, action=AuditAction.UPDATE, objects=[consultation])
        messages.success(request, f"{consultation.patient.full_name}: {done}.")
    return HttpResponseRedirect(_safe_next(request, reverse("frontdesk:board")))


# --- Walk-ins ------------------------------------------------------------------------------------


@desk_view
def walk_ins(request):
    """Each provider's queue with positions and estimated waits; add a known patient as a
    walk-in; call next; remove with a reason."""
    organization = request.desk_organization
    providers = selectors.desk_providers(organization=organization)
    chosen, search, found = _patient_picker(request, organization)
    form = forms.WalkInForm(request.POST or None, providers=providers)
    if request.method == "POST" and chosen is not None and form.is_valid():
        provider = selectors.desk_provider_get(
            user=request.user, organization=organization, provider_id=form.cleaned_data["provider"]
        )
        try:
            entry = clinic_services.queue_join(
                patient=chosen, provider=provider, reason=form.cleaned_data["reason"]
            )
        except ApplicationError as exc:
            _error(request, exc)
        else:
            audit_objects(request=request, action=AuditAction.CREATE, objects=[entry])
            messages.success(request, f"{chosen.full_name} is waiting for {provider.full_name}.")
            return HttpResponseRedirect(reverse("frontdesk:walk_ins"))
    tz = selectors.desk_zone(organization)
    rows = selectors.desk_day(
        user=request.user, organization=organization, day=timezone.now().astimezone(tz).date()
    )
    in_progress = {
        row.provider.pk: [c for c in row.consultations if c.status == "in_progress"] for row in rows
    }
    _audit_read(
        request,
        patients=[*found, *([chosen] if chosen else [])],
        objects=[obj for row in rows for obj in (*row.queue, *in_progress[row.provider.pk])],
    )
    return _page(
        request,
        "walk_ins.html",
        "Walk-ins",
        rows=rows,
        in_progress=in_progress,
        form=form,
        search=search,
        found=found,
        patient=chosen,
    )


@require_POST
@desk_view
def call_next(request, provider_id: int):
    """Call the head of a provider's queue: a walk-in starts, planned to end by the next
    booking."""
    provider = selectors.desk_provider_get(
        user=request.user, organization=request.desk_organization, provider_id=provider_id
    )
    try:
        consultation = clinic_services.queue_call_next(provider=provider, actor=request.user)
    except ApplicationError as exc:
        _error(request, exc)
    else:
        audit_objects(request=request, action=AuditAction.CREATE, objects=[consultation])
        end = timezone.localtime(consultation.scheduled_end)
        messages.success(
            request,
            f"{consultation.patient.full_name} is called to {provider.full_name}, planned "
            f"until {end:%H:%M} ({request.desk_organization.timezone}).",
        )
    return HttpResponseRedirect(_safe_next(request, reverse("frontdesk:walk_ins")))


@desk_view
def queue_remove(request, entry_id: int):
    """Take a waiting patient out of the queue, with a reason."""
    entry = selectors.desk_queue_entry_get(
        user=request.user, organization=request.desk_organization, entry_id=entry_id
    )
    form = forms.QueueRemoveForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            clinic_services.queue_remove(
                entry=entry, actor=request.user, reason=form.cleaned_data["reason"]
            )
        except ApplicationError as exc:
            _error(request, exc)
        else:
            audit_objects(request=request, action=AuditAction.UPDATE, objects=[entry])
            messages.success(request, f"{entry.patient.full_name} is out of the queue.")
            return HttpResponseRedirect(_safe_next(request, reverse("frontdesk:walk_ins")))
    _audit_read(request, objects=[entry])
    return _page(
        request,
        "queue_remove.html",
        "Remove from the queue",
        entry=entry,
        form=form,
        next=_safe_next(request, reverse("frontdesk:walk_ins")),
    )


# --- The clinic's outbox -------------------------------------------------------------------------


@desk_view
def outbox(request):
    """The clinic's notifications with status, attempts and last error; failed ones resent
    (workers.services.notifications_resend)."""
    organization = request.desk_organization
    status = request.GET.get("status", "")
    if request.method == "POST":
        try:
            ids = [int(i) for i in request.POST.getlist("ids")]
        except ValueError as exc:
            raise Http404("Bad selection.") from exc
        # Only the clinic's own rows, whatever ids were posted.
        mine = list(
            selectors.desk_outbox(user=request.user, organization=organization)
            .filter(pk__in=ids)
            .values_list("pk", flat=True)
        )
        resent = worker_services.notifications_resend(notification_ids=mine)
        messages.success(request, f"{resent} failed notification(s) put back in the outbox.")
        return HttpResponseRedirect(request.get_full_path())
    found = selectors.desk_outbox(user=request.user, organization=organization, status=status)
    page = Paginator(found, selectors.OUTBOX_PAGE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    # Recipients are named: a read of each patient's notification.
    audit_typed_rows(
        request=request,
        action=AuditAction.READ,
        rows=[
            (
                "notification",
                n.pk,
                n.user_id if n.user.role == Role.PATIENT else None,
                organization.pk,
            )
            for n in rows
        ],
    )
    return _page(
        request,
        "outbox.html",
        "Outbox",
        rows=rows,
        page=page,
        status=status,
        statuses=NotificationStatus.choices,
    )
